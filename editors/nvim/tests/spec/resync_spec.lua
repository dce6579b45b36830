-- A reconnect the daemon cannot replay (replay_events = 0) while a reply streams: the mock sent
-- "w0 w1 … w9" and holds the stream open until the Rust side opens the gate (after "resynced").
local crush = require("crush")
local client = require("crush.client")
local session = require("crush.session")

T.it("rebuilds from session/messages and the streaming message, then follows the live stream", function()
  vim.cmd("Crush")
  T.wait("the chat", function()
    return vim.b.crush_session ~= nil
  end)
  local sid, buf = vim.b.crush_session, vim.api.nvim_get_current_buf()
  local s = session.sessions[sid]
  T.wait("subscribed", function()
    return s.subscribed and not s.buffering
  end)
  local done
  vim.api.nvim_create_autocmd("User", {
    pattern = "CrushRunComplete",
    once = true,
    callback = function(ev)
      done = ev.data
    end,
  })
  crush.send("stream ten words")
  local want = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
  T.wait("the reply so far", function()
    return T.contains(buf, want)
  end)
  local resyncs, connects = s.resyncs, client.state.connects
  client.drop(true)
  T.wait("disconnected", function()
    return client.state.status == "disconnected"
  end)
  -- Events happen while we are away (another client queues a prompt), so our cursor is behind
  -- and, with no replay log, the daemon answers resync.
  local other = T.helper_client("helper")
  local queued = other.request_sync("agent/send", { sessionId = sid, prompt = "queued meanwhile" })
  T.eq("queued", queued.state, "queued behind the held run")
  other.close()
  client.resume()
  T.wait("reconnected and rebuilt", function()
    return client.state.connects == connects + 1 and s.resyncs == resyncs + 1 and not s.buffering
  end, nil, function()
    return vim.inspect({
      status = client.state.status,
      connects = { client.state.connects, connects },
      resyncs = { s.resyncs, resyncs },
      replays = s.replays,
      buffering = s.buffering,
      err = client.state.last_error,
      timer = client.state.timer ~= nil,
    })
  end)
  T.eq(1, s.streaming_rebuilds, "the rebuild took the streaming message")
  T.eq("crush: running, queued 1", crush.statusline(), "still running, one queued")
  T.eq(1, T.count(buf, want), "the partial reply once:\n" .. T.text(buf))
  T.signal("resynced")
  T.wait("the run's end", function()
    return done
  end, 15000)
  T.eq(want, done.text, "reply")
  T.wait("idle", function()
    return crush.statusline() == "crush: idle"
  end)
  T.wait("the queued prompt's reply", function()
    return T.contains(buf, "Hello from the mock.")
  end)
  T.eq(1, T.count(buf, want), "the reply once:\n" .. T.text(buf))
  T.eq(2, T.count(buf, "## Assistant"), "two assistant messages")
  -- Once as the prompt (the header shows it too: the daemon titled the session with it).
  T.eq(1, T.count(buf, "## You\n\nstream ten words"), "the prompt once")
  T.eq(1, T.count(buf, "queued meanwhile"), "the queued prompt once")
end)
