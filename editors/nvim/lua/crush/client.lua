--- The connection to crushd: socket path, starting the daemon, `vim.lsp.rpc.connect`, the
--- `initialize` handshake, requests that wait for a connection, and reconnecting with backoff.
--- What the daemon says (notifications, its requests) is handed to the handlers set by
--- `crush.session`; this module knows nothing about sessions.
local config = require("crush.config")
local util = require("crush.util")

local M = {}

M.PROTOCOL_VERSION = 1
M.VERSION = "0.1.0"

---@class crush.ClientState
local state = {
  status = "disconnected", -- disconnected | connecting | ready | incompatible
  rpc = nil, ---@type vim.lsp.rpc.PublicClient?
  gen = 0, -- bumped for every connection, so callbacks of an old one are ignored
  epoch = nil, ---@type string?
  init = nil, ---@type table? the last initialize result
  pending = {}, ---@type table<integer, function> callbacks of requests in flight
  waiters = {}, ---@type function[] called with (err) once ready or once connecting failed
  attempt = 0, -- reconnect attempts since the last success
  timer = nil, ---@type uv.uv_timer_t?
  hold_reconnect = false, -- tests: keep a dropped connection down until released
  no_autostart = false, -- set after a deliberate daemon stop: reconnect, but do not restart it
  stopped = false, -- VimLeave: no more reconnects
  last_error = nil, ---@type string?
  reported = nil, ---@type string? the connection failure last shown to the user, until a connection succeeds
  closing_why = nil, ---@type string? why we closed the connection being made (timeout, refused initialize)
  connects = 0, -- successful initializes, for tests and :checkhealth
}
M.state = state

--- Hooks set by crush.session.
M.handlers = {
  notification = function(_, _) end,
  request = function(_, _)
    return nil
  end,
  ready = function(_) end,
  closed = function() end,
  wants_connection = function()
    return false
  end,
}

--- A stable id for this Neovim instance, kept across reconnects and plugin reloads.
function M.client_id()
  if type(vim.g.crush_client_id) ~= "string" or vim.g.crush_client_id == "" then
    vim.g.crush_client_id = util.uuid7()
  end
  return vim.g.crush_client_id
end

--- The name other clients see for this one: the user's `client_name`, else one with this
--- Neovim's pid, so that "allowed by …" and `crushctl status` tell two instances apart.
function M.name()
  local n = config.options.client_name
  if type(n) == "string" and n ~= "" then
    return n
  end
  return string.format("crush.nvim (pid %d)", vim.fn.getpid())
end

--- The socket path, resolved as the daemon resolves it (docs/protocol.md §2.1).
function M.socket_path()
  local opt = config.options.socket
  if type(opt) == "string" and opt ~= "" then
    return vim.fs.normalize(opt)
  end
  local env = vim.env.CRUSHD_SOCKET
  if env and env ~= "" then
    return env
  end
  local xdg = vim.env.XDG_RUNTIME_DIR
  if xdg and xdg ~= "" and xdg:sub(1, 1) == "/" then
    return xdg .. "/crushd/crushd.sock"
  end
  local tmp = vim.env.TMPDIR
  if not tmp or tmp == "" then
    tmp = "/tmp"
  end
  return string.format("%s/crushd-%d/crushd.sock", tmp:gsub("/+$", ""), vim.uv.getuid())
end

--- Tries to connect to `path`; cb(ok, err) on the main loop.
function M.probe(path, cb)
  local pipe = vim.uv.new_pipe(false)
  if not pipe then
    return vim.schedule_wrap(cb)(false, "cannot create a pipe")
  end
  pipe:connect(path, function(err)
    pipe:close()
    vim.schedule(function()
      cb(err == nil, err)
    end)
  end)
end

--- Runs `crushctl daemon start`; cb(ok, message).
function M.start_daemon(path, cb)
  local exe = config.options.crushctl
  if vim.fn.executable(exe) ~= 1 then
    return cb(
      false,
      string.format(
        "the daemon is not running and %q was not found to start it: put crushctl on PATH or set `crushctl` in require('crush').setup()",
        exe
      )
    )
  end
  local ok, err = pcall(vim.system, { exe, "--socket", path, "daemon", "start" }, { text = true }, function(out)
    vim.schedule(function()
      if out.code == 0 then
        cb(true)
      else
        local msg = vim.trim((out.stderr or "") .. (out.stdout or ""))
        cb(false, string.format("`crushctl daemon start` failed (exit %d): %s", out.code, msg))
      end
    end)
  end)
  if not ok then
    cb(false, "cannot run crushctl: " .. tostring(err))
  end
end

local function fail_waiters(err)
  local w = state.waiters
  state.waiters = {}
  for _, f in ipairs(w) do
    f(err)
  end
end

--- A connection could not be made: shown to the user (once: the reconnects that fail the same
--- way are not, until a connection succeeds or the failure changes), and given to the waiters.
local function failed(msg)
  state.last_error = msg
  if msg ~= state.reported then
    state.reported = msg
    util.error(msg)
  end
  fail_waiters(msg)
end

local function flush_waiters()
  local w = state.waiters
  state.waiters = {}
  for _, f in ipairs(w) do
    f(nil)
  end
end

local schedule_reconnect

--- The connection `gen` ended; `failure` says why when it ended before `initialize` was
--- answered (the remote relay's exit, in its own words).
local function on_closed(gen, failure)
  if gen ~= state.gen then
    return
  end
  local was = state.status
  state.rpc = nil
  if state.status ~= "incompatible" then
    state.status = "disconnected"
  end
  local pending = state.pending
  state.pending = {}
  for _, cb in pairs(pending) do
    pcall(cb, { code = -32800, message = "the connection to crushd closed" }, nil)
  end
  if was == "ready" then
    M.handlers.closed()
  end
  if was == "connecting" then
    failed(failure or state.closing_why or "the connection to crushd closed before it answered initialize")
  end
  schedule_reconnect()
end

local function dispatchers(gen, remote)
  return {
    notification = function(method, params)
      local function handle()
        if gen == state.gen then
          if method == "$/daemonShutdown" and type(params) == "table" and params.reason == "request" then
            state.no_autostart = true
          end
          M.handlers.notification(method, params or {})
        end
      end
      -- vim.lsp.rpc already schedules notifications (as it schedules server requests and
      -- responses) onto the main loop; scheduling once more would let a daemon request that
      -- came after a notification be handled before it.
      if vim.in_fast_event() then
        vim.schedule(handle)
      else
        handle()
      end
    end,
    server_request = function(method, params)
      -- vim.lsp.rpc sends whatever this returns as the response, at once: it must be a table
      -- (or an error), never nil.
      local ok, result, err = pcall(M.handlers.request, method, params or {})
      if not ok then
        return nil, vim.lsp.rpc.rpc_response_error(-32603, tostring(result))
      end
      if result == nil and err == nil then
        return nil, vim.lsp.rpc.rpc_response_error(-32601, "crush.nvim does not handle " .. method)
      end
      return result, err
    end,
    on_exit = function(code, signal, said)
      vim.schedule(function()
        local failure = nil
        if remote and state.status == "connecting" and gen == state.gen then
          failure = M.remote_failure(remote, code, signal, said, state.closing_why)
        end
        on_closed(gen, failure)
      end)
    end,
    on_error = function() end,
  }
end

--- The `remote` option when it names a host, else nil.
function M.remote()
  local r = config.options.remote
  if type(r) == "table" and type(r.host) == "string" and r.host ~= "" then
    return r
  end
  return nil
end

--- The command that relays to the remote daemon: `crushctl --remote HOST proxy` (ssh runs the
--- remote crushctl's proxy, which starts the remote daemon unless `no_autostart`).
function M.remote_command(remote, no_autostart)
  local cmd = { config.options.crushctl, "--remote", remote.host }
  if type(remote.crushctl) == "string" and remote.crushctl ~= "" then
    vim.list_extend(cmd, { "--remote-crushctl", remote.crushctl })
  end
  if no_autostart then
    table.insert(cmd, "--no-autostart")
  end
  table.insert(cmd, "proxy")
  return cmd
end

--- How much of the relay's stderr is kept to explain a failure (its last bytes).
local STDERR_TAIL = 4096

--- Starts `cmd`, the relay to a remote daemon, as the transport of a `vim.lsp.rpc` client.
--- `vim.lsp.rpc.start` sends a process's stderr only to :LspLog, where nobody looks; `sh`
--- redirects it to a file instead, whose tail is passed to `dispatchers.on_exit` as its third
--- argument: ssh's own words (refused connection, unknown host, denied key) or the remote
--- shell's and crushctl's. Raises when crushctl itself cannot be found.
function M.start_relay(cmd, dispatchers)
  if vim.fn.executable(cmd[1]) ~= 1 then
    error(
      string.format("%q was not found: put crushctl on PATH or set `crushctl` in require('crush').setup()", cmd[1]),
      0
    )
  end
  local file = vim.fn.tempname()
  local on_exit = dispatchers.on_exit or function() end
  local wrapped = vim.tbl_extend("force", dispatchers, {
    on_exit = function(code, signal)
      -- vim.system calls this once the process has exited and its pipes are read.
      local said = ""
      local f = io.open(file, "rb")
      if f then
        local size = f:seek("end") or 0
        f:seek("set", math.max(0, size - STDERR_TAIL))
        said = f:read("*a") or ""
        f:close()
      end
      os.remove(file)
      on_exit(code, signal, vim.trim(said))
    end,
  })
  local sh = { "sh", "-c", 'f=$1; shift; exec "$@" 2>"$f"', "sh", file }
  return vim.lsp.rpc.start(vim.list_extend(sh, cmd), wrapped)
end

--- Why the remote daemon could not be reached, for the user: the host, then what ssh (or the
--- remote shell, or the remote crushctl) said, its last lines; `why` is our own reason when we
--- ended the relay ourselves (no answer in time).
function M.remote_failure(remote, code, signal, said, why)
  local lines = vim.split(said or "", "\n", { trimempty = true })
  lines = vim.list_slice(lines, math.max(1, #lines - 4))
  local msg = string.format("cannot reach crushd on %s over SSH: ", remote.host)
  if #lines > 0 then
    msg = msg .. table.concat(lines, "\n")
    if why then
      msg = msg .. "\n(" .. why .. ")"
    end
  elseif why then
    msg = msg .. why
  elseif signal and signal ~= 0 then
    msg = msg .. string.format("`%s` was killed by signal %d", table.concat(M.remote_command(remote, false), " "), signal)
  else
    msg = msg .. string.format("`%s` exited with status %s", table.concat(M.remote_command(remote, false), " "), tostring(code))
  end
  if code == 127 then
    -- The remote shell found no crushctl: point at the setting that names it.
    msg = msg .. "\n(is crushctl installed there? set `remote.crushctl` to its path on " .. remote.host .. ")"
  end
  return msg
end

--- `where`: a socket path, or the remote command; the transport follows.
local function open(where)
  state.gen = state.gen + 1
  local gen = state.gen
  state.closing_why = nil
  local remote = type(where) == "table" and M.remote() or nil
  local path = remote and table.concat(where, " ") or where
  local ok, rpc = pcall(function()
    if remote then
      return M.start_relay(where, dispatchers(gen, remote))
    end
    return vim.lsp.rpc.connect(where)(dispatchers(gen))
  end)
  if not ok or not rpc then
    state.status = "disconnected"
    if remote then
      failed(string.format("cannot reach crushd on %s over SSH: %s", remote.host, tostring(rpc)))
    else
      failed("cannot connect to " .. path .. ": " .. tostring(rpc))
    end
    return schedule_reconnect()
  end
  state.rpc = rpc
  local answered = false
  local timer = vim.defer_fn(function()
    if not answered and gen == state.gen then
      state.closing_why = "crushd did not answer initialize on " .. path
      rpc.terminate()
    end
  end, config.options.connect_timeout_ms)
  local params = {
    clientInfo = { name = M.name(), version = M.VERSION },
    clientId = M.client_id(),
    protocolVersion = M.PROTOCOL_VERSION,
    -- The plugin keeps its own cursors and subscribes with afterSeq itself.
    restoreSubscriptions = false,
  }
  rpc.request("initialize", params, function(err, result)
    answered = true
    pcall(function()
      timer:stop()
      timer:close()
    end)
    if gen ~= state.gen then
      return
    end
    if err or type(result) ~= "table" then
      state.closing_why = "initialize failed: " .. (err and err.message or "no result")
      rpc.terminate()
      return
    end
    if result.protocolVersion ~= M.PROTOCOL_VERSION then
      state.status = "incompatible"
      state.last_error = string.format(
        "crushd speaks protocol version %s, crush.nvim speaks %d: stop the daemon (`crushctl daemon stop`) so a matching one starts, or update the plugin",
        tostring(result.protocolVersion),
        M.PROTOCOL_VERSION
      )
      util.error(state.last_error)
      rpc.notify("exit", vim.empty_dict())
      rpc.terminate()
      fail_waiters(state.last_error)
      return
    end
    rpc.notify("initialized", vim.empty_dict())
    state.status = "ready"
    state.epoch = result.epoch
    state.init = result
    state.attempt = 0
    state.no_autostart = false
    state.last_error = nil
    if state.reported then
      -- The user was told it failed: tell them it works again.
      state.reported = nil
      local remote = M.remote()
      util.notify("connected to crushd" .. (remote and (" on " .. remote.host) or ""))
    end
    state.connects = state.connects + 1
    M.handlers.ready(result)
    flush_waiters()
  end)
end

--- Starts connecting (unless already connecting or connected).
---@param allow_autostart boolean
function M.connect(allow_autostart)
  if not util.nvim_ok() then
    state.last_error = util.version_error()
    return fail_waiters(state.last_error)
  end
  if state.status == "ready" or state.status == "connecting" then
    return
  end
  if state.timer then
    state.timer:stop()
    state.timer:close()
    state.timer = nil
  end
  state.status = "connecting"
  local remote = M.remote()
  if remote then
    -- The remote proxy finds (and starts) its daemon; a failure ends the process, which says
    -- why on stderr, and on_exit reconnects with backoff like a dropped socket.
    return open(M.remote_command(remote, not (config.options.autostart and allow_autostart)))
  end
  local path = M.socket_path()
  M.probe(path, function(ok, perr)
    if ok then
      return open(path)
    end
    if not (config.options.autostart and allow_autostart) then
      state.status = "disconnected"
      state.last_error = string.format("crushd is not running (%s: %s)", path, tostring(perr))
      fail_waiters(state.last_error)
      return schedule_reconnect()
    end
    M.start_daemon(path, function(started, msg)
      if started then
        return open(path)
      end
      state.status = "disconnected"
      failed(msg)
      schedule_reconnect()
    end)
  end)
end

schedule_reconnect = function()
  if state.stopped or state.hold_reconnect or state.status == "incompatible" then
    return
  end
  if not config.options.reconnect.enabled or not M.handlers.wants_connection() then
    return
  end
  if state.timer or state.status ~= "disconnected" then
    return
  end
  local r = config.options.reconnect
  local delay = math.min(r.initial_ms * (r.factor ^ state.attempt), r.max_ms)
  state.attempt = state.attempt + 1
  local timer = vim.uv.new_timer()
  state.timer = timer
  timer:start(
    math.floor(delay),
    0,
    vim.schedule_wrap(function()
      if state.timer == timer then
        state.timer = nil
        timer:close()
      end
      if state.status == "disconnected" and not state.hold_reconnect then
        M.connect(not state.no_autostart)
      end
    end)
  )
end

--- Calls cb(err) once connected (err nil), starting the daemon if needed.
function M.ensure(cb)
  if state.status == "ready" then
    return cb(nil)
  end
  if state.status == "incompatible" then
    return cb(state.last_error)
  end
  table.insert(state.waiters, cb)
  M.connect(true)
end

--- Sends a request once connected; cb(err, result) with err = { code, message } or nil.
function M.request(method, params, cb)
  cb = cb or function() end
  M.ensure(function(e)
    if e then
      return cb({ code = -32603, message = e }, nil)
    end
    M.request_now(method, params, cb)
  end)
end

--- Sends a request on the current connection, failing at once when there is none.
function M.request_now(method, params, cb)
  cb = cb or function() end
  local rpc = state.rpc
  if state.status ~= "ready" or not rpc then
    return cb({ code = -32603, message = "not connected to crushd" }, nil)
  end
  -- Called once: with the response, or with an error when the connection closes first
  -- (vim.lsp.rpc never calls back for requests lost with their connection).
  local id, called = nil, false
  local function once(err, result)
    if called then
      return
    end
    called = true
    if id then
      state.pending[id] = nil
    end
    cb(err, result)
  end
  local ok, mid = rpc.request(method, params or vim.empty_dict(), once)
  if not ok then
    return once({ code = -32603, message = "could not send " .. method }, nil)
  end
  id = mid
  state.pending[id] = once
end

function M.notify(method, params)
  if state.rpc and state.status == "ready" then
    state.rpc.notify(method, params or vim.empty_dict())
  end
end

--- Synchronous request for commands and :checkhealth (waits with vim.wait).
function M.request_sync(method, params, timeout_ms)
  local done, err, res = false, nil, nil
  M.request(method, params, function(e, r)
    done, err, res = true, e, r
  end)
  vim.wait(timeout_ms or 5000, function()
    return done
  end, 10)
  if not done then
    return nil, { code = -32004, message = method .. " got no answer in time" }
  end
  return res, err
end

function M.is_ready()
  return state.status == "ready"
end

--- Closes the connection as a drop would (no shutdown): the daemon keeps our claims and
--- subscriptions for its grace period, and we reconnect. `hold` keeps it down until resume().
function M.drop(hold)
  state.hold_reconnect = hold and true or false
  if state.rpc then
    state.rpc.terminate()
  end
end

function M.resume()
  state.hold_reconnect = false
  state.attempt = 0
  if state.status == "disconnected" then
    M.connect(true)
  end
end

--- Orderly end (Neovim quits): shutdown + exit, so our claims are released at once.
function M.stop()
  state.stopped = true
  local rpc = state.rpc
  if rpc and state.status == "ready" then
    local done = false
    rpc.request("shutdown", vim.empty_dict(), function()
      done = true
    end)
    vim.wait(500, function()
      return done
    end, 10)
    rpc.notify("exit", vim.empty_dict())
    rpc.terminate()
  end
end

return M
