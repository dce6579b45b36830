-- Reconnecting: the connection drops while another client runs a prompt in the session; then the
-- daemon restarts.
local crush = require("crush")
local client = require("crush.client")
local session = require("crush.session")

local sid, buf

T.it("reconnects after a drop and replays what it missed, once", function()
  vim.cmd("Crush")
  T.wait("the chat", function()
    return vim.b.crush_session ~= nil
  end)
  sid, buf = vim.b.crush_session, vim.api.nvim_get_current_buf()
  local s = session.sessions[sid]
  T.wait("subscribed", function()
    return s.subscribed and not s.buffering
  end)
  local epoch = client.state.epoch
  local connects = client.state.connects
  client.drop(true)
  T.wait("disconnected", function()
    return client.state.status == "disconnected"
  end)
  T.eq("crush: disconnected", crush.statusline(), "status line")
  -- Meanwhile another client runs a prompt in the session.
  local other = T.helper_client("helper")
  local sent = other.request_sync("agent/send", { sessionId = sid, prompt = "while you were away" })
  T.wait("the other client's run", function()
    for _, n in ipairs(other.notes) do
      if n.method == "$/runComplete" and n.params.runId == sent.runId then
        return true
      end
    end
  end, 15000)
  other.close()
  T.ok(not T.contains(buf, "while you were away"), "nothing arrived while disconnected")
  client.resume()
  T.wait("reconnected and caught up", function()
    return client.state.connects == connects + 1 and T.contains(buf, "Hello from the mock.")
  end, 15000)
  T.eq(epoch, client.state.epoch, "same daemon")
  T.ok(T.contains(buf, "while you were away"), "the prompt")
  T.eq(1, T.count(buf, "Hello from the mock."), "the reply once")
  T.eq(1, s.replays, "replayed from the cursor")
  T.eq(1, s.resyncs, "no reload")
  T.eq("crush: idle", crush.statusline(), "status line")
end)

T.it("after a daemon restart it starts a new one and reloads the session", function()
  local s = session.sessions[sid]
  local old_pid, old_epoch = client.state.init.pid, client.state.epoch
  local connects = client.state.connects
  vim.uv.kill(old_pid, "sigterm")
  T.wait("a new daemon", function()
    return client.state.connects == connects + 1 and client.state.epoch ~= old_epoch
  end, 20000)
  T.ok(client.state.init.pid ~= old_pid, "another process")
  T.wait("resubscribed with a reload", function()
    return s.resyncs == 2 and s.subscribed and not s.buffering
  end)
  T.ok(T.contains(buf, "while you were away"), "history kept:\n" .. T.text(buf))
  T.eq(1, T.count(buf, "Hello from the mock."), "the reply once")
  local done = false
  vim.api.nvim_create_autocmd("User", {
    pattern = "CrushRunComplete",
    once = true,
    callback = function(ev)
      done = ev.data
    end,
  })
  vim.cmd("Crush send after the restart")
  T.wait("a run on the new daemon", function()
    return done
  end, 15000)
  T.eq(2, T.count(buf, "Hello from the mock."), "the new reply streamed in")
  T.ok(T.contains(buf, "after the restart"), "the new prompt")
end)
