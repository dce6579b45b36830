-- Permission prompts: the model (the mock) writes hello.txt, then runs `rm -rf build`, then `ls`
-- (saved as a rule for the workspace) and `ls -a` (allowed by the rule).
local crush = require("crush")
local session = require("crush.session")

local completes = T.record("CrushRunComplete")
local requests = T.record("CrushPermissionRequest")

T.it("shows a write's prompt with its diff and allows it with a key", function()
  vim.cmd("Crush")
  T.wait("the chat", function()
    return vim.b.crush_session ~= nil
  end)
  local buf, win = vim.api.nvim_get_current_buf(), vim.api.nvim_get_current_win()
  vim.cmd("Crush send write hello.txt")
  T.wait("the permission request", function()
    return #requests == 1
  end)
  T.eq("write", requests[1].tool, "tool")
  T.eq("Create hello.txt", requests[1].title, "title")
  T.eq("hello.txt", requests[1].input.path, "input")
  T.wait("the prompt in the chat", function()
    return T.contains(buf, "**Permission needed** · Create hello.txt")
  end)
  T.ok(T.contains(buf, "+hi from crush"), "the diff is shown:\n" .. T.text(buf))
  T.ok(T.contains(buf, "[a] allow once"), "the keys are shown")
  T.eq("crush: waiting for permission", crush.statusline(), "status line")
  -- The prompt is not folded away; the tool call is a fold.
  local header = vim.fn.search("^▸ write: Create hello.txt", "nw")
  T.ok(header > 0, "tool call line:\n" .. T.text(buf))
  local prompt_line = vim.fn.search("Permission needed", "nw")
  vim.api.nvim_win_call(win, function()
    T.eq(-1, vim.fn.foldclosed(prompt_line), "the prompt is visible")
  end)
  vim.api.nvim_set_current_win(win)
  vim.api.nvim_feedkeys("a", "mx", false)
  local done
  T.wait("the run's end", function()
    done = completes[1]
    return done
  end, 15000)
  T.eq("Wrote hello.txt.", done.text, "reply")
  T.wait("the prompt gone", function()
    return not T.contains(buf, "Permission needed")
  end, nil, function()
    return T.text(buf)
  end)
  T.ok(T.contains(buf, "permission allowed once by crush.nvim"), "note:\n" .. T.text(buf))
  T.ok(T.contains(buf, "│ result (completed):"), "result shown")
  header = vim.fn.search("^▸ write: Create hello.txt", "nw")
  vim.api.nvim_win_call(win, function()
    vim.api.nvim_win_set_cursor(win, { 1, 0 })
    T.eq(header, vim.fn.foldclosed(header + 1), "the tool call is folded with its result")
  end)
  T.eq("hi from crush\n", table.concat(vim.fn.readfile("hello.txt"), "\n") .. "\n", "file written")
  T.eq("crush: idle", crush.statusline(), "idle again")
end)

T.it("answers through vim.ui.select (deny)", function()
  local buf = vim.api.nvim_get_current_buf()
  crush.send("clean up")
  T.wait("the second request", function()
    return #requests == 2 and T.contains(buf, "Permission needed")
  end)
  T.eq("bash", requests[2].tool, "tool")
  T.ok(T.contains(buf, "$ rm -rf build"), "the command is shown")
  local orig = vim.ui.select
  local offered
  vim.ui.select = function(items, opts, cb)
    offered = vim.tbl_map(opts.format_item, items)
    cb(items[#items])
  end
  vim.cmd("Crush permission")
  vim.ui.select = orig
  T.eq({
    "Allow once",
    "Allow for this session",
    'Always allow bash "rm" in this session',
    'Always allow bash "rm" in this workspace',
    'Always allow bash "rm" everywhere',
    "Deny",
  }, offered, "choices")
  T.wait("the run's end", function()
    return completes[2]
  end, 15000)
  T.eq("Not running it.", completes[2].text, "reply")
  T.wait("the denied note", function()
    return T.contains(buf, "permission denied by crush.nvim") and not T.contains(buf, "Permission needed")
  end, nil, function()
    return T.text(buf)
  end)
  T.ok(T.contains(buf, "· denied"), "tool status denied")
  T.eq(0, #session.pending_prompts(session.sessions[vim.b.crush_session]), "no prompt left")
end)

T.it("saves a rule with W, which allows the next ls; :Crush permissions shows and removes it", function()
  local buf, win = vim.api.nvim_get_current_buf(), vim.api.nvim_get_current_win()
  crush.send("list the files")
  T.wait("the third request", function()
    return #requests == 3 and T.contains(buf, "Permission needed")
  end)
  T.eq({ "session", "workspace", "global" }, requests[3].scopes, "scopes offered")
  T.eq("ls", requests[3].suggestedPattern, "suggested pattern")
  T.ok(T.contains(buf, '[W] always allow "ls" here'), "the key is shown:\n" .. T.text(buf))
  -- W asks for the rule's pattern, filled in with the suggestion; the user keeps it.
  local orig = vim.ui.input
  local offered
  vim.ui.input = function(opts, cb)
    offered = opts.default
    cb(opts.default)
  end
  vim.api.nvim_set_current_win(win)
  vim.api.nvim_feedkeys("W", "mx", false)
  vim.ui.input = orig
  T.eq("ls", offered, "the pattern offered")
  T.wait("the run's end", function()
    return completes[3]
  end, 15000)
  T.wait("the note", function()
    return T.contains(buf, "permission always allowed (a rule was saved) by crush.nvim")
  end, nil, function()
    return T.text(buf)
  end)
  crush.send("list them again")
  T.wait("the fourth run's end", function()
    return completes[4]
  end, 15000)
  T.eq("Listed again.", completes[4].text, "reply")
  T.eq(3, #requests, "ls -a ran without a prompt")

  local view
  crush.permissions(function(err, b)
    T.eq(nil, err, "error")
    view = b
  end)
  T.wait("the permissions view", function()
    return view
  end)
  T.ok(vim.api.nvim_buf_get_name(view):find("crush://permissions", 1, true), "buffer name")
  T.ok(T.contains(view, 'bash "ls"  workspace  (by crush.nvim'), "the rule is listed:\n" .. T.text(view))
  T.ok(T.contains(view, "allowAlways  Run: ls  — answered by crush.nvim (pid ") and T.contains(view, "), connection "), "who answered:\n" .. T.text(view))
  T.ok(T.contains(view, 'allow  Run: ls -a  — rule: bash "ls" (workspace)'), "which rule applied:\n" .. T.text(view))
  T.ok(T.contains(view, "deny  Run: rm -rf build  — answered by crush.nvim"), "the deny:\n" .. T.text(view))
  vim.api.nvim_set_current_buf(view)
  local row = vim.fn.search('bash "ls"', "nw")
  vim.api.nvim_win_set_cursor(0, { row, 0 })
  vim.api.nvim_feedkeys("x", "mx", false)
  T.wait("the rule removed", function()
    return T.contains(view, "(none: answer a prompt") and not T.contains(view, 'bash "ls"  workspace')
  end, nil, function()
    return T.text(view)
  end)
end)
