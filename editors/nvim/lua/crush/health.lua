--- :checkhealth crush — Neovim version, crushctl/crushd, the daemon, its protocol and model, and
--- its MCP servers.
local M = {}

-- Neovim < 0.10 has the older `health` module (report_*); enough of it to say "too old".
local health = vim.health and vim.health.start and vim.health
  or (function()
    local old = require("health")
    return { start = old.report_start, ok = old.report_ok, warn = old.report_warn, error = old.report_error }
  end)()

--- Connects once (without a clientId, without starting the daemon) and asks `daemon/status`,
--- `model/list` and `mcp/list`, waiting at most `timeout` ms. Uses the plugin's connection when
--- it is up. `where`: the socket path, or with `remote` the relay's command; `out.exit` is how
--- the relay ended (code, and why in its own words) when it ended before answering.
local function ask(where, timeout)
  local client = require("crush.client")
  if client.is_ready() then
    local st, e1 = client.request_sync("daemon/status", vim.empty_dict(), timeout)
    local ml, e2 = client.request_sync("model/list", vim.empty_dict(), timeout)
    local mcp, e3 = client.request_sync("mcp/list", vim.empty_dict(), timeout)
    local e = e1 or e2 or e3
    return { init = client.state.init, status = st, models = ml, mcp = mcp, err = e and e.message }
  end
  local out = {}
  local done = false
  local rpc
  local ok, err = pcall(function()
    if type(where) == "table" then
      local remote = client.remote()
      rpc = client.start_relay(where, {
        on_exit = function(code, signal, said)
          if not out.init then
            out.exit = { code = code, said = said }
            out.err = client.remote_failure(remote, code, signal, said)
          end
          done = true
        end,
      })
    else
      rpc = vim.lsp.rpc.connect(where)({
        on_exit = function()
          done = true
        end,
      })
    end
  end)
  if not ok then
    return { err = tostring(err) }
  end
  local function finish(msg)
    out.err = out.err or msg
    done = true
  end
  rpc.request("initialize", { clientInfo = { name = "crush.nvim checkhealth" }, protocolVersion = 1 }, function(e, r)
    if e then
      return finish(e.message)
    end
    out.init = r
    rpc.notify("initialized", vim.empty_dict())
    rpc.request("daemon/status", vim.empty_dict(), function(e2, st)
      out.status = st
      if e2 then
        return finish(e2.message)
      end
      rpc.request("model/list", vim.empty_dict(), function(e3, ml)
        out.models = ml
        if e3 then
          return finish(e3.message)
        end
        rpc.request("mcp/list", vim.empty_dict(), function(e4, mcp)
          out.mcp = mcp
          finish(e4 and e4.message)
        end)
      end)
    end)
  end)
  vim.wait(timeout, function()
    return done
  end, 10)
  if not done then
    out.err = out.err or "no answer within " .. timeout .. " ms"
  end
  pcall(function()
    rpc.notify("exit", vim.empty_dict())
    rpc.terminate()
  end)
  return out
end

function M.check()
  health.start("crush.nvim")
  local util = require("crush.util")
  local v = vim.version()
  if util.nvim_ok() then
    health.ok(string.format("Neovim %d.%d.%d (0.10 or newer is needed)", v.major, v.minor, v.patch))
  else
    health.error(util.version_error(), { "Install Neovim 0.10 or newer" })
    return
  end

  local config = require("crush.config").options
  local crushctl = vim.fn.exepath(config.crushctl)
  if crushctl ~= "" then
    health.ok("crushctl found: " .. crushctl)
  else
    health.warn(
      string.format("crushctl (%q) not found: the plugin cannot start the daemon by itself", config.crushctl),
      { "Put crushctl on PATH, or set `crushctl` in require('crush').setup()" }
    )
  end
  local crushd = vim.fn.exepath("crushd")
  if crushd == "" and crushctl ~= "" then
    local beside = vim.fs.joinpath(vim.fs.dirname(crushctl), "crushd")
    if vim.fn.executable(beside) == 1 then
      crushd = beside
    end
  end
  if crushd == "" and vim.env.CRUSHD_BIN and vim.fn.executable(vim.env.CRUSHD_BIN) == 1 then
    crushd = vim.env.CRUSHD_BIN
  end
  if crushd ~= "" then
    health.ok("crushd found: " .. crushd)
  else
    health.warn("crushd not found beside crushctl, on PATH or at $CRUSHD_BIN", { "Install crushd next to crushctl" })
  end

  local client = require("crush.client")
  local remote = client.remote()
  local path, r
  if remote then
    -- The daemon and its socket are on the other machine; `crushctl --remote` speaks for it.
    health.info(string.format(
      "remote: crushd on %s over SSH (`%s`), workspace %s",
      remote.host,
      table.concat(client.remote_command(remote, false), " "),
      tostring(remote.workspace)
    ))
    if type(remote.workspace) ~= "string" or remote.workspace == "" then
      health.warn("`remote.workspace` is not set", { "Set it to the project directory on " .. remote.host })
    end
    path = remote.host .. " over SSH"
    -- Through the relay, as the plugin connects, but without starting the daemon there.
    r = ask(client.remote_command(remote, true), 15000)
    if not r.init then
      if r.exit and r.exit.code == 3 then
        -- The remote crushctl's "unreachable": ssh got there, and no daemon runs.
        health.warn("crushd is not running on " .. remote.host .. ": " .. tostring(r.exit.said), {
          config.autostart and "It is started on first use (:Crush)"
            or "Run `crushctl daemon start` there (autostart is off)",
        })
      else
        health.error(tostring(r.err), {
          "Try `crushctl --remote " .. remote.host .. " status` in a shell: ssh runs in batch mode, so it needs a key from ssh-agent or ~/.ssh/config and a known host key, and crushctl on the PATH there (or `remote.crushctl`)",
        })
      end
      return
    end
  end
  path = path or client.socket_path()
  local reachable = remote ~= nil
  if reachable or client.is_ready() then
    reachable = true
  else
    local done = false
    client.probe(path, function(ok)
      reachable = ok
      done = true
    end)
    vim.wait(2000, function()
      return done
    end, 10)
  end
  if not reachable then
    health.warn("crushd is not running (socket " .. path .. ")", {
      config.autostart and "It is started on first use (:Crush), or run `crushctl daemon start`"
        or "Run `crushctl daemon start` (autostart is off)",
    })
    return
  end
  r = r or ask(path, 5000)
  if not r.init then
    health.error("crushd at " .. path .. " did not answer: " .. tostring(r.err))
    return
  end
  health.ok(string.format("crushd reachable at %s (pid %s, version %s)", path, tostring(r.init.pid), tostring(r.init.serverInfo and r.init.serverInfo.version)))
  if r.init.protocolVersion == client.PROTOCOL_VERSION then
    health.ok("protocol version " .. tostring(r.init.protocolVersion))
  else
    health.error(
      string.format("crushd speaks protocol version %s; crush.nvim speaks %d", tostring(r.init.protocolVersion), client.PROTOCOL_VERSION),
      { "Stop the daemon (`crushctl daemon stop`) so a matching one starts, or update the plugin" }
    )
  end
  local function report_model(ml)
    if not ml then
      health.warn("model/list failed: " .. tostring(r.err))
      return
    end
    if not ml.default then
      health.warn("no default model is configured", {
        'Set default_model = "<provider>/<model>" in the daemon\'s config.toml, or pick one per session with :Crush model',
      })
      return
    end
    local unavailable
    for _, m in ipairs(ml.models or {}) do
      if (m.name == ml.default or m.model == ml.default) and m.unavailable then
        unavailable = m.unavailable
      end
    end
    if unavailable then
      health.warn("default model " .. ml.default .. " is not usable: " .. unavailable)
    else
      health.ok("model configured: " .. ml.default)
    end
  end
  report_model(r.models)

  health.start("crush.nvim: MCP servers")
  if not r.mcp then
    health.warn("mcp/list failed: " .. tostring(r.err))
    return
  end
  local servers = r.mcp.servers or {}
  if #servers == 0 then
    health.ok("no MCP servers are configured ([mcp.servers.NAME] in the daemon's config.toml, or a project's .mcp.json)")
  end
  for _, s in ipairs(servers) do
    local line = string.format("%s (%s): %s, %d tools — %s", s.name, s.scope, s.state, s.toolCount or 0, s.command)
    if s.state == "ready" or s.state == "idle" or s.state == "starting" then
      health.ok(line)
    elseif s.state == "disabled" then
      health.ok(line .. " (enabled = false)")
    elseif s.state == "unapproved" then
      health.warn(line, { "It starts once you approve it when a run in its workspace asks" })
    else
      health.warn(line .. (s.lastError and (": " .. s.lastError) or ""), {
        "See the daemon's log (crushctl daemon logs) for the server's stderr; `crushctl mcp restart " .. s.name .. "` retries now",
      })
    end
    for _, t in ipairs(s.rejectedTools or {}) do
      health.warn(string.format("%s: tool %s is not offered: %s", s.name, t.name, t.reason))
    end
  end
end

return M
