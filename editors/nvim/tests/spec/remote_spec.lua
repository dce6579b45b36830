-- `remote`: the plugin reaches the daemon through `crushctl --remote HOST proxy`. The test's
-- ssh ($CRUSHD_SSH) runs the remote command on this machine, so this checks the plugin's side
-- (command, workspace, reconnect); tests/tests/remote_ssh.rs checks the real OpenSSH path.
local crush = require("crush")
local client = require("crush.client")
local session = require("crush.session")

local function run_complete()
  local done = false
  vim.api.nvim_create_autocmd("User", {
    pattern = "CrushRunComplete",
    once = true,
    callback = function(ev)
      done = ev.data
    end,
  })
  return function()
    return done
  end
end

T.it("without remote.workspace it says what to set, and opens nothing", function()
  crush.setup({ remote = { host = "box" } })
  local got
  crush.list_sessions(function(err)
    got = err
  end)
  T.wait("an error", function()
    return got ~= nil
  end)
  T.ok(tostring(got):find("remote.workspace", 1, true), "names the setting: " .. tostring(got))
end)

T.it("runs a prompt in the remote workspace through crushctl --remote HOST proxy", function()
  local ws = vim.env.CRUSH_REMOTE_WORKSPACE
  crush.setup({ remote = { host = "box", workspace = ws }, reconnect = { max_ms = 200 } })
  T.ok(vim.fn.getcwd() ~= ws, "the local directory is another one")
  vim.cmd("Crush")
  T.wait("the chat", function()
    return vim.b.crush_session ~= nil
  end)
  local buf = vim.api.nvim_get_current_buf()
  local s = session.sessions[vim.b.crush_session]
  local w = session.workspaces[ws]
  T.ok(w ~= nil and w.canonical == ws, "the remote workspace is open: " .. vim.inspect(session.workspaces))
  T.wait("subscribed", function()
    return s.subscribed and not s.buffering
  end)
  local done = run_complete()
  vim.cmd("Crush send hello over there")
  T.wait("the reply", done, 15000)
  T.eq(1, T.count(buf, "Hello from the mock."), "the reply once")

  -- The tunnel drops while another client runs a prompt: a new one is opened and the missed
  -- run replays from the cursor, once.
  local connects = client.state.connects
  client.drop(true)
  T.wait("disconnected", function()
    return client.state.status == "disconnected"
  end)
  local other = T.helper_client("helper")
  local sent = other.request_sync("agent/send", { sessionId = s.id or vim.b.crush_session, prompt = "while the tunnel was down" })
  T.wait("the other client's run", function()
    for _, n in ipairs(other.notes) do
      if n.method == "$/runComplete" and n.params.runId == sent.runId then
        return true
      end
    end
  end, 15000)
  other.close()
  client.resume()
  T.wait("reconnected and caught up", function()
    return client.state.connects == connects + 1 and T.count(buf, "Hello from the mock.") == 2
  end, 15000)
  T.ok(T.contains(buf, "while the tunnel was down"), "the prompt")
  T.eq(1, s.replays, "replayed from the cursor")
end)
