--- Options of crush.nvim: the defaults, and the user's options merged over them by `setup()`.
local M = {}

---@class crush.Config
M.defaults = {
  --- Socket of the daemon. nil: `$CRUSHD_SOCKET`, else the per-user default (docs/protocol.md §2.1).
  socket = nil,
  --- The `crushctl` executable, used to start the daemon when it is not running.
  crushctl = "crushctl",
  --- Start the daemon (`crushctl daemon start`) when nobody answers on the socket.
  autostart = true,
  --- The daemon on another machine, over SSH: nil (this machine's daemon), or
  --- `{ host = "[ssh://][user@]host[:port]", workspace = "/abs/path/there", crushctl = nil }`.
  --- The plugin runs `crushctl --remote HOST proxy` (ssh with BatchMode: keys from an agent or
  --- ~/.ssh/config); `workspace` is the project directory on that machine (the local current
  --- directory means nothing there); `crushctl` is the remote crushctl when not on its PATH.
  remote = nil,
  --- `clientInfo.name`: other clients see it in claims and in "answered by" notes. nil: "crush.nvim
  --- (pid N)", so two Neovims are told apart.
  client_name = nil,
  --- Reconnect after the connection drops: first delay, growth factor, longest delay (ms).
  reconnect = { enabled = true, initial_ms = 100, factor = 2, max_ms = 5000 },
  --- How long to wait for the daemon to answer `initialize`, in ms.
  connect_timeout_ms = 10000,
  --- How many of a session's newest messages the chat buffer loads.
  history_limit = 200,
  --- Where `:Crush` opens the chat: "vsplit", "split", "tab" or "current".
  window = "vsplit",
  --- Chat buffer keys (buffer-local, only in chat buffers); set a key to false to leave it unmapped.
  keys = {
    prompt = "i", -- ask for a prompt with vim.ui.input and send it
    allow = "a", -- answer the permission prompt under the cursor (or the oldest): allow once
    allow_session = "A", -- allow for the session
    allow_workspace = "W", -- always allow: save a rule for this workspace (asks for its pattern)
    deny = "d", -- deny
    choose = "p", -- pick the answer with vim.ui.select
    cancel = "<C-c>", -- cancel the session's work
  },
  --- Also offer pending permission prompts through vim.ui.select as soon as they arrive.
  permission_select = false,
  --- Notify (vim.notify) when a permission request arrives while its chat is not visible.
  notify = true,
}

---@type crush.Config
M.options = vim.deepcopy(M.defaults)

--- Merges `opts` over the defaults (not over earlier options: setup() is idempotent).
---@param opts? table
function M.setup(opts)
  assert(opts == nil or type(opts) == "table", "crush.setup(opts): opts must be a table")
  M.options = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  return M.options
end

return M
