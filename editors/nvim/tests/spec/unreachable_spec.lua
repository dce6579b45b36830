-- The connection cannot be made: the user is told, with what failed and the failing program's
-- own words (stderr), once per failure however often the plugin retries, and :checkhealth
-- says it too. The first tests use a stand-in ssh ($CRUSH_FAKE_SSH, run as $CRUSHD_SSH: it runs
-- the remote command here); the last uses the real ssh against a 127.0.0.1 port where nothing
-- listens ($CRUSH_DEAD_PORT), so ssh's own "Connection refused" must reach the user.
local crush = require("crush")
local client = require("crush.client")
local session = require("crush.session")

-- Every notification, as the user would see it.
local notes = {}
vim.notify = function(msg, level)
  table.insert(notes, { msg = tostring(msg), level = level or vim.log.levels.INFO })
end

local function errors(needle)
  local got = {}
  for _, n in ipairs(notes) do
    if n.level == vim.log.levels.ERROR and n.msg:find(needle, 1, true) then
      table.insert(got, n.msg)
    end
  end
  return got
end

local function shown()
  return vim.inspect(notes)
end

local function health_text()
  vim.cmd("checkhealth crush")
  local text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
  vim.cmd("bwipeout!")
  return text
end

T.it("remote, and the local crushctl is missing: the error names it and the setting", function()
  vim.env.CRUSHD_SSH = vim.env.CRUSH_FAKE_SSH
  crush.setup({ remote = { host = "box", workspace = "/srv/app" }, crushctl = "/nonexistent/crushctl" })
  vim.cmd("Crush")
  T.wait("the error", function()
    return #errors("/nonexistent/crushctl") > 0
  end, 10000, shown)
  local msg = errors("/nonexistent/crushctl")[1]
  T.ok(msg:find("not found", 1, true), msg)
  T.ok(msg:find("`crushctl`", 1, true), "names the setting: " .. msg)
  T.eq(1, #errors("/nonexistent/crushctl"), "shown once: " .. shown())
end)

T.it("remote, and crushctl is missing over there: the remote shell's words and the setting", function()
  vim.env.CRUSHD_SSH = vim.env.CRUSH_FAKE_SSH
  crush.setup({ remote = { host = "box", workspace = "/srv/app", crushctl = "/nonexistent/remote-crushctl" } })
  vim.cmd("Crush")
  T.wait("the error", function()
    return #errors("remote-crushctl") > 0
  end, 10000, shown)
  local msg = errors("remote-crushctl")[1]
  T.ok(msg:find("cannot reach crushd on box over SSH", 1, true), "says what failed: " .. msg)
  T.ok(msg:find("/nonexistent/remote-crushctl", 1, true) and msg:find("not found", 1, true), "the shell's words: " .. msg)
  T.ok(msg:find("remote.crushctl", 1, true), "names the setting: " .. msg)
end)

T.it("remote, host unreachable: ssh's own message, once however often the plugin retries", function()
  local host = "127.0.0.1:" .. assert(vim.env.CRUSH_DEAD_PORT, "CRUSH_DEAD_PORT")
  vim.env.CRUSHD_SSH = nil -- the real ssh
  crush.setup({ remote = { host = host, workspace = "/srv/app" }, reconnect = { initial_ms = 20, factor = 2, max_ms = 40 } })
  vim.cmd("Crush")
  T.wait("ssh's words", function()
    return #errors("Connection refused") > 0
  end, 15000, shown)
  local msg = errors("Connection refused")[1]
  T.ok(msg:find("cannot reach crushd on " .. host .. " over SSH", 1, true), "says what failed: " .. msg)
  T.ok(msg:find("port " .. vim.env.CRUSH_DEAD_PORT, 1, true), "ssh's own line: " .. msg)
  T.ok(not msg:find("LspLog", 1, true), "not sent to the LSP log: " .. msg)
  -- A followed session keeps the plugin reconnecting in the background: each attempt fails the
  -- same way, and none is shown again.
  local attempts = client.state.attempt
  session.follow("01900000-0000-7000-8000-000000000000")
  T.wait("several more attempts", function()
    return client.state.attempt >= attempts + 4
  end, 15000)
  T.eq(1, #errors("Connection refused"), "one error for the failure: " .. shown())
end)

T.it(":checkhealth crush reports the failure with ssh's message", function()
  local text = health_text()
  T.ok(text:find("ERROR", 1, true), "an error:\n" .. text)
  T.ok(text:find("Connection refused", 1, true), "ssh's words:\n" .. text)
  T.ok(text:find("cannot reach crushd on 127.0.0.1:" .. vim.env.CRUSH_DEAD_PORT, 1, true), "what failed:\n" .. text)
end)

T.it("when a connection succeeds again, a note says so", function()
  -- The host answers now (the stand-in ssh runs the proxy here, which starts a daemon); the
  -- session followed above keeps the plugin reconnecting.
  vim.env.CRUSHD_SSH = vim.env.CRUSH_FAKE_SSH
  crush.setup({ remote = { host = "box", workspace = "/srv/app" }, reconnect = { initial_ms = 20, factor = 2, max_ms = 40 } })
  T.wait("connected", function()
    return client.is_ready()
  end, 15000, shown)
  T.wait("the note", function()
    for _, n in ipairs(notes) do
      if n.level == vim.log.levels.INFO and n.msg == "crush: connected to crushd on box" then
        return true
      end
    end
  end, 5000, shown)
  T.eq(1, #errors("Connection refused"), "the failure was not shown again: " .. shown())
end)
