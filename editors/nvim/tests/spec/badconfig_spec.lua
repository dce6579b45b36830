-- The plugin starts the daemon (none runs) and the daemon refuses its config file: the error the
-- user sees is the daemon's own (file, line and key), not "see the log".
local client = require("crush.client")

T.it("says what is wrong with the config file", function()
  local _, err = client.request_sync("daemon/status", vim.empty_dict(), 15000)
  T.ok(err ~= nil, "an error")
  local msg = tostring(err.message)
  T.ok(msg:find("max_step", 1, true), msg)
  T.ok(msg:find("config.toml", 1, true), msg)
  T.ok(not msg:find("see ", 1, true), msg)
end)
