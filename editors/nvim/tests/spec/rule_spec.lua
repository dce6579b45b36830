-- "Always allow" with a pattern the user edits: the model (the mock) runs `echo hello world`
-- (suggested rule: `echo hello`), then `echo bye` (allowed by the edited rule `echo`), then
-- writes docs/a.md (suggested: `docs/**`; saved as `docs/*.md` for the session).
local crush = require("crush")
local session = require("crush.session")

local completes = T.record("CrushRunComplete")
local requests = T.record("CrushPermissionRequest")

-- Plays the user at vim.ui.input: each call takes the next answer (nil: cancelled).
local asked = {}
local answers = {}
vim.ui.input = function(opts, cb)
  table.insert(asked, { prompt = opts.prompt, default = opts.default })
  local a = table.remove(answers, 1)
  vim.schedule(function()
    cb(a ~= vim.NIL and a or nil)
  end)
end
local notes = {}
local notify = vim.notify
vim.notify = function(msg, level, o)
  table.insert(notes, tostring(msg))
  return notify(msg, level, o)
end
local function noted(needle)
  for _, n in ipairs(notes) do
    if n:find(needle, 1, true) then
      return true
    end
  end
  return false
end

T.it("W asks for the pattern; empty, refused and cancelled answers leave the prompt; the edited one is saved", function()
  vim.cmd("Crush")
  T.wait("the chat", function()
    return vim.b.crush_session ~= nil
  end)
  local buf, win = vim.api.nvim_get_current_buf(), vim.api.nvim_get_current_win()
  local s = session.sessions[vim.b.crush_session]
  crush.send("say hello")
  T.wait("the permission request", function()
    return #requests == 1 and T.contains(buf, "Permission needed")
  end)
  T.eq("echo hello", requests[1].suggestedPattern, "suggested pattern")

  -- Enter on an emptied input: nothing is answered.
  answers = { "  " }
  vim.api.nvim_set_current_win(win)
  vim.api.nvim_feedkeys("W", "mx", false)
  T.wait("the note", function()
    return noted("no rule saved: the prompt is still waiting")
  end, nil, function()
    return table.concat(notes, "\n")
  end)
  T.eq("echo hello", asked[1].default, "filled in with the suggestion")
  T.ok(asked[1].prompt:find("always allow bash in this workspace, commands starting with", 1, true), asked[1].prompt)
  T.eq(1, #session.pending_prompts(s), "still pending")

  -- A prefix with shell syntax: the daemon's reason is said and the input asked again, filled in
  -- with what was refused; cancelling it leaves the prompt answerable.
  answers = { "echo; rm -rf /", vim.NIL }
  vim.api.nvim_feedkeys("W", "mx", false)
  T.wait("asked again", function()
    return #asked == 3
  end)
  T.wait("the daemon's reason", function()
    return noted("rule not saved: pattern:") and noted("has shell syntax")
  end, nil, function()
    return table.concat(notes, "\n")
  end)
  T.eq("echo; rm -rf /", asked[3].default, "asked again with the refused pattern")
  T.wait("the prompt pending again", function()
    return #session.pending_prompts(s) == 1
  end)
  T.ok(T.contains(buf, "Permission needed"), "the prompt is still shown:\n" .. T.text(buf))
  T.eq(nil, completes[1], "the run still waits")

  -- The user's own pattern.
  answers = { "echo" }
  vim.api.nvim_feedkeys("W", "mx", false)
  T.wait("the run's end", function()
    return completes[1]
  end, 15000)
  T.eq("echo hello", asked[4].default, "filled in with the suggestion again")
  T.wait("the note", function()
    return T.contains(buf, "permission always allowed (a rule was saved) by crush.nvim")
  end, nil, function()
    return T.text(buf)
  end)
  -- `echo bye` matches the rule `echo` (not the suggestion `echo hello`): no prompt.
  crush.send("say bye")
  T.wait("the second run's end", function()
    return completes[2]
  end, 15000)
  T.eq(1, #requests, "echo bye ran without a prompt")
end)

T.it("the Always allow choices of :Crush permission ask for the pattern too (a glob)", function()
  local buf = vim.api.nvim_get_current_buf()
  local s = session.sessions[vim.b.crush_session]
  crush.send("write the doc")
  T.wait("the write's request", function()
    return #requests == 2 and T.contains(buf, "Permission needed")
  end)
  T.eq("docs/**", requests[2].suggestedPattern, "suggested pattern")
  local orig = vim.ui.select
  vim.ui.select = function(items, opts, cb)
    for _, it in ipairs(items) do
      if opts.format_item(it):find("in this session", 1, true) and it[1] == "allowAlways" then
        return cb(it)
      end
    end
    error("no session rule offered")
  end
  -- A glob outside the workspace is refused; then the user's own glob is saved.
  answers = { "../*.md", "docs/*.md" }
  local before = #asked
  vim.cmd("Crush permission")
  vim.ui.select = orig
  T.wait("the run's end", function()
    return completes[3]
  end, 15000)
  T.eq(before + 2, #asked, "asked twice")
  T.eq("docs/**", asked[before + 1].default, "filled in with the suggestion")
  T.ok(asked[before + 1].prompt:find("always allow write in this session, files matching", 1, true), asked[before + 1].prompt)
  T.eq("../*.md", asked[before + 2].default, "asked again with the refused glob")
  T.ok(noted("must be relative to the workspace"), "the reason:\n" .. table.concat(notes, "\n"))
  T.eq(0, #session.pending_prompts(s), "answered")

  local view
  crush.permissions(function(err, b)
    T.eq(nil, err, "error")
    view = b
  end)
  T.wait("the permissions view", function()
    return view
  end)
  T.ok(T.contains(view, 'bash "echo"  workspace'), "the edited bash rule:\n" .. T.text(view))
  T.ok(T.contains(view, 'write "docs/*.md"  session'), "the edited glob:\n" .. T.text(view))
end)
