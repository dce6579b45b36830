-- What a new user trips on (issue 22): the short ids crushctl shows work in :Crush attach, an
-- unknown id is "no such session", one mark per cancelled run, a client name per Neovim, and
-- session titles that follow renames. The daemon runs; crushctl is on PATH.
local crush = require("crush")
local client = require("crush.client")

local errors = {}
local orig_notify = vim.notify
vim.notify = function(msg, level, opts)
  if level == vim.log.levels.ERROR then
    table.insert(errors, msg)
  end
  return orig_notify(msg, level, opts)
end

local completes = T.record("CrushRunComplete")

local function crushctl(args)
  local r = vim.system(vim.list_extend({ "crushctl" }, args), { text = true }):wait()
  T.eq(0, r.code, "crushctl " .. table.concat(args, " ") .. ": " .. tostring(r.stderr))
  return r.stdout
end

--- Rows of `crushctl sessions`: { id = short id, title = … }.
local function cli_sessions()
  local rows = {}
  for i, line in ipairs(vim.split(crushctl({ "sessions" }), "\n", { trimempty = true })) do
    if i > 1 then
      local id, title = line:match("^(%S+)%s+(%S+)")
      table.insert(rows, { id = id, title = title })
    end
  end
  return rows
end

local chat_buf, sid

T.it("attaches with the short id crushctl shows", function()
  for _, title in ipairs({ "first", "second", "third" }) do
    crushctl({ "run", "-m", "echo", title })
  end
  local rows = cli_sessions()
  T.eq(3, #rows, vim.inspect(rows))
  local second
  for _, r in ipairs(rows) do
    if r.title == "second" then
      second = r
    end
  end
  T.ok(second and #second.id == 8, "a short id in the table: " .. vim.inspect(rows))
  vim.cmd("Crush attach " .. second.id)
  T.wait("the chat of 'second'", function()
    return vim.b.crush_session ~= nil and vim.endswith(vim.b.crush_session, second.id) and T.contains(0, "# second")
  end)
  chat_buf, sid = vim.api.nvim_get_current_buf(), vim.b.crush_session
  -- The header shows the same short form.
  T.ok(T.contains(chat_buf, "_session " .. second.id), T.text(chat_buf))
  T.eq({}, errors, "no error")
end)

T.it("takes a prefix too, and says 'no such session' for an unknown id", function()
  vim.cmd("Crush attach " .. sid:sub(1, #sid - 3))
  T.wait("the same chat", function()
    return vim.b.crush_session == sid
  end)
  vim.cmd("Crush attach 0000ffff")
  T.wait("an error", function()
    return #errors > 0
  end)
  T.ok(errors[1]:find("no such session", 1, true), errors[1])
  T.ok(not T.contains(chat_buf, "deleted"), T.text(chat_buf))
end)

T.it("marks a cancelled run once", function()
  vim.api.nvim_set_current_buf(chat_buf)
  crush.send("stop me")
  T.wait("the partial reply", function()
    return T.contains(chat_buf, "partial")
  end)
  vim.cmd("Crush cancel")
  T.wait("the run's end", function()
    return completes[1] ~= nil
  end)
  T.wait("the mark", function()
    return T.contains(chat_buf, "_(cancelled)_")
  end)
  -- Let any later event land before counting.
  T.wait("the status line idle", function()
    return crush.statusline() == "crush: idle"
  end)
  T.eq(1, T.count(chat_buf, "cancelled"), T.text(chat_buf))
end)

T.it("names itself so that two Neovims are told apart", function()
  local name = client.name()
  T.ok(name:find(tostring(vim.fn.getpid()), 1, true), name)
  -- Opening the workspace claims it under that name.
  local listed = false
  crush.list_sessions(function()
    listed = true
  end)
  T.wait("the workspace opened", function()
    return listed
  end)
  local helper = T.helper_client("spec-helper")
  local list = helper.request_sync("workspace/list", vim.empty_dict())
  local names = {}
  for _, w in ipairs(list.workspaces or {}) do
    for _, c in ipairs(w.claims or {}) do
      table.insert(names, c.name)
    end
  end
  helper.close()
  T.ok(vim.tbl_contains(names, name), vim.inspect(names))
end)

T.it("shows the session's title and follows renames", function()
  vim.cmd("Crush rename Named here")
  T.wait("the new title", function()
    return T.contains(chat_buf, "# Named here")
  end)
  -- Renamed by another client: the header follows after the next turn.
  crushctl({ "sessions", "rename", sid:sub(-8), "Named elsewhere" })
  crush.send("hello again")
  T.wait("the second run's end", function()
    return completes[2] ~= nil
  end)
  T.wait("the title from crushctl", function()
    return T.contains(chat_buf, "# Named elsewhere")
  end)
end)
