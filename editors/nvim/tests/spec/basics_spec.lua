-- Plugin basics: options, the command and its completion, <Plug> mappings, help tags,
-- :checkhealth, starting the daemon on first use, the status line. No daemon runs at first.
local crush = require("crush")
local config = require("crush.config")
local client = require("crush.client")

local function health_text()
  vim.cmd("checkhealth crush")
  local text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
  vim.cmd("bwipeout!")
  return text
end

T.it("setup merges options over the defaults, and again from the defaults", function()
  crush.setup({ window = "split", keys = { deny = "x" }, reconnect = { max_ms = 100 } })
  T.eq("split", config.options.window, "window")
  T.eq("x", config.options.keys.deny, "keys.deny")
  T.eq("a", config.options.keys.allow, "keys.allow kept")
  T.eq(100, config.options.reconnect.max_ms, "reconnect.max_ms")
  T.eq(100, config.options.reconnect.initial_ms, "reconnect.initial_ms kept")
  crush.setup()
  T.eq("vsplit", config.options.window, "window after setup()")
  T.eq("d", config.options.keys.deny, "keys.deny after setup()")
end)

T.it("the plugin defines :Crush and <Plug> mappings, and maps no keys of its own", function()
  T.eq(2, vim.fn.exists(":Crush"), ":Crush exists")
  T.ok(vim.g.loaded_crush, "load guard set")
  for _, m in ipairs({ { "n", "open" }, { "n", "prompt" }, { "x", "send-selection" }, { "n", "cancel" }, { "n", "new" }, { "n", "sessions" }, { "n", "permission" } }) do
    T.ok(vim.fn.maparg("<Plug>(crush-" .. m[2] .. ")", m[1]) ~= "" or vim.fn.hasmapto("<Plug>(crush-" .. m[2] .. ")") >= 0, m[2])
    local info = vim.fn.maparg("<Plug>(crush-" .. m[2] .. ")", m[1], false, true)
    T.ok(info.lhs ~= nil, "<Plug>(crush-" .. m[2] .. ") in mode " .. m[1])
  end
  for _, mode in ipairs({ "n", "x", "i", "o", "c", "t" }) do
    for _, map in ipairs(vim.api.nvim_get_keymap(mode)) do
      local desc = map.desc or ""
      if desc:match("^crush") then
        T.ok(map.lhs:find("<Plug>", 1, true) == 1, "only <Plug> mappings, found " .. map.lhs)
      end
    end
  end
  -- Loading the plugin file again is a no-op (load guard).
  vim.cmd("runtime! plugin/crush.lua")
  T.eq(2, vim.fn.exists(":Crush"), ":Crush still there")
end)

T.it("completes subcommands", function()
  local all = vim.fn.getcompletion("Crush ", "cmdline")
  for _, sub in ipairs({ "attach", "cancel", "model", "new", "send", "sessions", "steer" }) do
    T.ok(vim.tbl_contains(all, sub), "completion offers " .. sub .. " in " .. vim.inspect(all))
  end
  T.eq({ "send", "sessions", "steer" }, vim.fn.getcompletion("Crush s", "cmdline"), "prefix s")
  T.eq({ "cancel" }, vim.fn.getcompletion("Crush ca", "cmdline"), "prefix ca")
end)

T.it("has help tags for its commands, options and events", function()
  local dir = vim.fn.tempname()
  vim.fn.mkdir(dir .. "/doc", "p")
  vim.fn.writefile(vim.fn.readfile(T.root .. "/doc/crush.txt"), dir .. "/doc/crush.txt")
  vim.cmd("helptags " .. vim.fn.fnameescape(dir .. "/doc"))
  local tags = table.concat(vim.fn.readfile(dir .. "/doc/tags"), "\n")
  for _, tag in ipairs({ "crush", "crush.txt", ":Crush", ":Crush-send", ":Crush-cancel", ":Crush-attach", ":Crush-model", "crush-config", "crush-permissions", "crush-rules", "crush-statusline", "CrushRunComplete", "CrushPermissionRequest" }) do
    T.ok(tags:find("\n" .. vim.pesc(tag) .. "\t", 1) or tags:find("^" .. vim.pesc(tag) .. "\t"), "tag " .. tag)
  end
  vim.opt.runtimepath:prepend(dir)
  vim.cmd("help :Crush-steer")
  T.ok(vim.api.nvim_buf_get_name(0):match("crush%.txt$"), ":help :Crush-steer opens crush.txt")
  vim.cmd("helpclose")
end)

T.it(":checkhealth crush says the daemon is not running yet", function()
  local text = health_text()
  T.ok(text:find("Neovim 0%.%d+"), "Neovim version reported:\n" .. text)
  T.ok(text:find("crushctl found", 1, true), "crushctl found:\n" .. text)
  T.ok(text:find("crushd found", 1, true), "crushd found:\n" .. text)
  T.ok(text:find("crushd is not running", 1, true), "not running:\n" .. text)
end)

T.it(":Crush starts the daemon, opens the chat and focuses it on the second call", function()
  local wins = #vim.api.nvim_tabpage_list_wins(0)
  vim.cmd("Crush")
  T.wait("the chat buffer", function()
    return vim.b.crush_session ~= nil
  end)
  T.ok(client.is_ready(), "connected")
  T.eq("markdown", vim.bo.filetype, "filetype")
  T.ok(vim.api.nvim_buf_get_name(0):match("^crush://session/"), "buffer name")
  T.eq(wins + 1, #vim.api.nvim_tabpage_list_wins(0), "one window more")
  T.wait("the header", function()
    return T.contains(0, "# New session")
  end)
  vim.cmd("wincmd p")
  vim.cmd("Crush")
  T.wait("focus back on the chat", function()
    return vim.b.crush_session ~= nil
  end)
  T.eq(wins + 1, #vim.api.nvim_tabpage_list_wins(0), "no new window")
  T.eq("crush: idle", crush.statusline(), "status line")
  T.ok(type(vim.g.crush_client_id) == "string" and #vim.g.crush_client_id == 36, "client id")
end)

T.it(":checkhealth crush reports the daemon, its protocol and the model", function()
  local text = health_text()
  T.ok(text:find("crushd reachable at", 1, true), "reachable:\n" .. text)
  T.ok(text:find("protocol version 1", 1, true), "protocol:\n" .. text)
  T.ok(text:find("model configured: mock/mock-1", 1, true), "model:\n" .. text)
  T.ok(text:find("no MCP servers are configured", 1, true), "MCP servers:\n" .. text)
  T.ok(not text:find("ERROR", 1, true), "no errors:\n" .. text)
end)

T.it("completes model names and session ids from the daemon", function()
  T.ok(vim.tbl_contains(vim.fn.getcompletion("Crush model ", "cmdline"), "mock/mock-1"), "model completion")
  local id = vim.b.crush_session
  T.eq({ id }, vim.fn.getcompletion("Crush attach " .. id:sub(1, 20), "cmdline"), "session id completion")
end)
