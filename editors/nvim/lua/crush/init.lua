--- crush.nvim: chat with the crushd agent from Neovim. The public API: `setup()`, the actions
--- behind `:Crush` and its `<Plug>` mappings, and a status line component.
local config = require("crush.config")
local util = require("crush.util")

local M = {}

local function client()
  require("crush.session") -- installs the connection's handlers
  return require("crush.client")
end
local function session()
  return require("crush.session")
end
local function chat()
  return require("crush.chat")
end

--- Optional: merges `opts` over the defaults (see `:help crush-config`).
function M.setup(opts)
  config.setup(opts)
  if not util.nvim_ok() then
    util.error(util.version_error())
  end
  return M
end

local function guard()
  if not util.nvim_ok() then
    util.error(util.version_error())
    return false
  end
  return true
end

--- The workspace of this editor: the current working directory, or with `remote` its
--- `workspace` (a path on that machine). nil and a message when `remote` names none.
function M.workspace_path()
  local remote = require("crush.client").remote()
  if remote then
    if type(remote.workspace) ~= "string" or remote.workspace == "" then
      return nil, "with `remote`, set `remote.workspace` to the project directory on " .. remote.host
    end
    return remote.workspace
  end
  return vim.fn.getcwd()
end

--- Calls cb(err, s) with the current session of the current workspace, choosing the most
--- recently updated one (or creating one) the first time, and following it.
function M.current(cb)
  local path = M.workspace_path()
  local sess = session()
  sess.open_workspace(path, function(err, w)
    if err then
      return cb(err)
    end
    local function use(id)
      w.current = id
      sess.follow(id, function(ferr, s)
        cb(ferr, s)
      end)
    end
    if w.current then
      return use(w.current)
    end
    client().request("session/list", { workspaceId = w.id }, function(lerr, res)
      if lerr then
        return cb(lerr.message)
      end
      local first = res.sessions and res.sessions[1]
      if first then
        return use(first.sessionId)
      end
      client().request("session/create", { workspaceId = w.id }, function(cerr, info)
        if cerr then
          return cb(cerr.message)
        end
        use(info.sessionId)
      end)
    end)
  end)
end

--- The session of buffer `buf` (a chat buffer), else the workspace's current one (if known).
function M.session_of_buf(buf)
  local id = vim.b[buf or 0].crush_session
  if id then
    return session().get(id)
  end
  local w = session().workspaces[M.workspace_path()]
  if w and w.current then
    return session().get(w.current)
  end
end

local function with_session(id, cb)
  if id then
    return session().follow(id, function(err, s)
      if err then
        return util.error(err)
      end
      cb(s)
    end)
  end
  local s = M.session_of_buf(0)
  if s and s.followed then
    return cb(s)
  end
  M.current(function(err, s2)
    if err then
      return util.error(err)
    end
    cb(s2)
  end)
end

--- `:Crush`: opens (or focuses) the chat of the current workspace's session.
function M.open(how)
  if not guard() then
    return
  end
  with_session(nil, function(s)
    chat().open(s, how)
  end)
end

--- Sends `text` to the session (id, or the current one); opts.attachments, opts.mode ("queue"
--- or "steer"), opts.model. cb(err, result) when the daemon has accepted it.
function M.send(text, opts, cb)
  if not guard() then
    return
  end
  opts = opts or {}
  cb = cb or function() end
  with_session(opts.session, function(s)
    local run_id = util.uuid7()
    local params = { sessionId = s.id, prompt = text or "", runId = run_id }
    if opts.attachments and #opts.attachments > 0 then
      params.attachments = opts.attachments
    end
    if opts.mode then
      params.mode = opts.mode
    end
    if opts.model then
      params.model = opts.model
    end
    session().runs[run_id] = { sessionId = s.id, prompt = text, attachments = params.attachments }
    client().request("agent/send", params, function(err, res)
      if err then
        session().runs[run_id] = nil
        util.error("agent/send failed: " .. tostring(err.message))
        return cb(err.message)
      end
      cb(nil, res, s)
    end)
  end)
end

--- Shows the chat of `s` in a split when no window shows it, keeping the current window.
function M.show(s)
  if chat().visible(s) then
    return
  end
  local win = vim.api.nvim_get_current_win()
  chat().open(s)
  if vim.api.nvim_win_is_valid(win) then
    vim.api.nvim_set_current_win(win)
  end
end

--- `:Crush steer {text}`: a prompt folded into the turn in progress.
function M.steer(text, cb)
  return M.send(text, { mode = "steer" }, cb)
end

--- The selection (or a line range) of buffer `buf` as an `agent/send` attachment.
function M.attachment(buf, line1, line2)
  buf = buf == 0 and vim.api.nvim_get_current_buf() or buf
  local lines = vim.api.nvim_buf_get_lines(buf, line1 - 1, line2, false)
  local name = vim.api.nvim_buf_get_name(buf)
  if name == "" then
    name = "[No Name]"
  else
    name = vim.fn.fnamemodify(name, ":.")
  end
  local ft = vim.bo[buf].filetype
  return {
    name = string.format("%s:%d-%d", name, line1, line2),
    mimeType = ft ~= "" and ("text/x-" .. ft) or "text/plain",
    text = table.concat(lines, "\n") .. "\n",
  }
end

--- Sends `text` with lines line1..line2 of the current buffer attached.
function M.send_range(text, line1, line2, cb)
  local att = M.attachment(0, line1, line2)
  return M.send(text or "", { attachments = { att } }, cb)
end

--- Asks for a prompt with vim.ui.input and sends it (with the range, when given).
function M.prompt(session_id, line1, line2)
  local att = line1 and M.attachment(0, line1, line2) or nil
  vim.ui.input({ prompt = att and ("crush (" .. att.name .. "): ") or "crush: " }, function(text)
    if text == nil or (vim.trim(text) == "" and not att) then
      return
    end
    M.send(text, { session = session_id, attachments = att and { att } or nil }, function(err, _, s)
      if not err and s then
        M.show(s)
      end
    end)
  end)
end

--- `:Crush cancel`: cancels the session's active run and what waits.
function M.cancel(session_id, cb)
  cb = cb or function() end
  with_session(session_id, function(s)
    client().request("agent/cancel", { sessionId = s.id }, function(err, res)
      if err then
        util.error("agent/cancel failed: " .. tostring(err.message))
        return cb(err.message)
      end
      cb(nil, res)
    end)
  end)
end

--- `:Crush compact`: has the model summarise the session's older messages now (the messages
--- stay stored; the chat shows where the summary stands). cb(err, SessionCompactResult).
function M.compact(session_id, cb)
  cb = cb or function() end
  with_session(session_id, function(s)
    util.notify("summarising the older messages of the session…")
    client().request("session/compact", { sessionId = s.id }, function(err, res)
      if err then
        util.error("session/compact failed: " .. tostring(err.message))
        return cb(err.message)
      end
      if res.compacted then
        util.notify(
          string.format(
            "summarised %d older messages: the model is now shown %d tokens of the session instead of %d",
            res.messages,
            res.tokensAfter,
            res.tokensBefore
          )
        )
      else
        util.notify("nothing to compact: only the first prompt and the latest turn are left as they are")
      end
      cb(nil, res)
    end)
  end)
end

--- `:Crush fork`: copies the session into a new one and opens the copy's chat. In a chat, the
--- copy ends at the message under the cursor; elsewhere it is the whole session. The files are
--- not touched. cb(err, SessionInfo of the copy).
function M.fork(session_id, cb)
  cb = cb or function() end
  local in_chat = vim.b.crush_session and session().get(vim.b.crush_session)
  local at = nil
  if in_chat and not session_id then
    at = chat().message_at(in_chat, vim.api.nvim_win_get_cursor(0)[1])
  end
  with_session(session_id, function(s)
    local params = { sessionId = s.id }
    if at and s == in_chat then
      params.messageId = at
    end
    client().request("session/fork", params, function(err, info)
      if err then
        util.error("session/fork failed: " .. tostring(err.message))
        return cb(err.message)
      end
      util.notify(string.format("forked into %q (%d messages)", info.title, info.messageCount))
      M.attach_full(info.sessionId, function(aerr)
        cb(aerr, info)
      end)
    end)
  end)
end

local function report_revert(what, res)
  if not res.done and res.conflicts and #res.conflicts > 0 then
    util.error(
      string.format(
        "nothing was %s: changed outside the runs since: %s (`:Crush! %s` overwrites them)",
        what,
        table.concat(res.conflicts, ", "),
        what == "undone" and "undo" or "redo"
      )
    )
  elseif not res.done then
    util.notify("nothing to redo: no undo since the last prompt")
  else
    util.notify(string.format("%s: %d messages, %d files", what, res.messages, #(res.files or {})))
  end
end

--- `:Crush undo[!]`: undoes the session's last turn that is not undone yet — its changes to the
--- files are put back and the model no longer sees it (the chat shows it marked "undone").
--- With `!`, files changed outside the runs since are overwritten too. cb(err, result).
function M.undo(session_id, force, cb)
  cb = cb or function() end
  with_session(session_id, function(s)
    local last
    for i = #s.entries, 1, -1 do
      local e = s.entries[i]
      if e.kind == "user" and e.id and not e.reverted then
        last = e.id
        break
      end
    end
    if not last then
      util.error("nothing to undo in this session")
      return cb("nothing to undo")
    end
    client().request("session/revert", { sessionId = s.id, messageId = last, force = force or false }, function(err, res)
      if err then
        util.error("session/revert failed: " .. tostring(err.message))
        return cb(err.message)
      end
      report_revert("undone", res)
      cb(nil, res)
    end)
  end)
end

--- `:Crush redo[!]`: takes the last undo back, while no prompt was sent since.
function M.redo(session_id, force, cb)
  cb = cb or function() end
  with_session(session_id, function(s)
    client().request("session/unrevert", { sessionId = s.id, force = force or false }, function(err, res)
      if err then
        util.error("session/unrevert failed: " .. tostring(err.message))
        return cb(err.message)
      end
      report_revert("redone", res)
      cb(nil, res)
    end)
  end)
end

--- `:Crush diff`: what the session's runs changed in the files, in a new tab (filetype diff).
function M.diff(session_id, cb)
  cb = cb or function() end
  with_session(session_id, function(s)
    client().request("session/diff", { sessionId = s.id }, function(err, res)
      if err then
        util.error("session/diff failed: " .. tostring(err.message))
        return cb(err.message)
      end
      vim.schedule(function()
        vim.cmd("tabnew")
        local buf = vim.api.nvim_get_current_buf()
        vim.bo[buf].buftype = "nofile"
        vim.bo[buf].bufhidden = "wipe"
        local text = res.diff ~= "" and res.diff or "(no changes)"
        vim.api.nvim_buf_set_lines(buf, 0, -1, false, vim.split(text, "\n", { trimempty = true }))
        vim.bo[buf].filetype = "diff"
        vim.bo[buf].modifiable = false
        pcall(vim.api.nvim_buf_set_name, buf, "crush://diff/" .. s.id)
        cb(nil, res, buf)
      end)
    end)
  end)
end

--- `:Crush new [title]`: a new session in the current workspace, opened in the chat.
function M.new(title, cb)
  if not guard() then
    return
  end
  cb = cb or function() end
  session().open_workspace(M.workspace_path(), function(err, w)
    if err then
      return util.error(err)
    end
    local params = { workspaceId = w.id }
    if title and title ~= "" then
      params.title = title
    end
    client().request("session/create", params, function(cerr, info)
      if cerr then
        util.error("session/create failed: " .. tostring(cerr.message))
        return cb(cerr.message)
      end
      w.current = info.sessionId
      session().follow(info.sessionId, function(ferr, s)
        if ferr then
          return cb(ferr)
        end
        chat().open(s)
        cb(nil, s)
      end)
    end)
  end)
end

--- Every session of every workspace the daemon knows; cb(err, list of SessionInfo).
local function all_sessions(cb)
  client().request("workspace/list", vim.empty_dict(), function(err, res)
    if err then
      return cb(err.message)
    end
    local list, waiting, failed = {}, 0, nil
    local workspaces = res.workspaces or {}
    if #workspaces == 0 then
      return cb(nil, list)
    end
    waiting = #workspaces
    for _, w in ipairs(workspaces) do
      client().request("session/list", { workspaceId = w.workspaceId }, function(lerr, lres)
        if lerr then
          failed = failed or lerr.message
        else
          vim.list_extend(list, lres.sessions or {})
        end
        waiting = waiting - 1
        if waiting == 0 then
          cb(failed, list)
        end
      end)
    end
  end)
end

--- The full id of the session `id` names, as crushctl reads it: the full id, or a unique
--- prefix or suffix of at least 4 characters (the short form shown is the last 8); cb(err, id).
function M.resolve_session(id, cb)
  client().request("session/get", { sessionId = id }, function(err, info)
    if not err and info then
      return cb(nil, info.sessionId)
    end
    if err and err.code ~= -32011 and err.code ~= -32602 then
      return cb(err.message)
    end
    local unknown = "no such session: " .. id .. " (:Crush sessions lists this workspace's)"
    if #id < 4 then
      return cb(unknown)
    end
    all_sessions(function(lerr, list)
      if lerr then
        return cb(lerr)
      end
      local found = {}
      for _, info2 in ipairs(list) do
        if util.id_matches(info2.sessionId, id) then
          table.insert(found, info2.sessionId)
        end
      end
      if #found == 1 then
        return cb(nil, found[1])
      elseif #found == 0 then
        return cb(unknown)
      end
      cb(string.format("%s matches several sessions; give more of the id: %s", id, table.concat(found, ", ")))
    end)
  end)
end

--- `:Crush attach {id}`: follows a session (any workspace's) and opens its chat. `id` may be
--- short (see resolve_session).
function M.attach(id, cb)
  if not guard() then
    return
  end
  cb = cb or function() end
  id = vim.trim(id or "")
  if id == "" then
    return util.error("usage: :Crush attach {session id}")
  end
  M.resolve_session(id, function(rerr, full)
    if rerr then
      util.error("cannot attach to " .. id .. ": " .. tostring(rerr))
      return cb(rerr)
    end
    M.attach_full(full, cb)
  end)
end

function M.attach_full(id, cb)
  local w = session().workspaces[M.workspace_path()]
  session().follow(id, function(err, s)
    if err then
      util.error("cannot attach to " .. id .. ": " .. tostring(err))
      return cb(err)
    end
    if w and s.workspace_id == w.id then
      w.current = id
    end
    chat().open(s)
    cb(nil, s)
  end)
end

--- `:Crush rename {title}`: gives the current session (or the chat's) a new title.
function M.rename(title, cb)
  if not guard() then
    return
  end
  cb = cb or function() end
  title = vim.trim(title or "")
  if title == "" then
    return util.error("usage: :Crush rename {title}")
  end
  with_session(nil, function(s)
    client().request("session/rename", { sessionId = s.id, title = title }, function(err, info)
      if err then
        util.error("cannot rename the session: " .. tostring(err.message))
        return cb(err.message)
      end
      session().set_info(s, info)
      cb(nil, info)
    end)
  end)
end

--- The sessions of the current workspace, each with its state; cb(err, list).
function M.list_sessions(cb)
  session().open_workspace(M.workspace_path(), function(err, w)
    if err then
      return cb(err)
    end
    client().request("session/list", { workspaceId = w.id }, function(lerr, res)
      if lerr then
        return cb(lerr.message)
      end
      local busy = {}
      for _, b in ipairs(w.busy or {}) do
        busy[b.sessionId] = b
      end
      local list = {}
      for _, info in ipairs(res.sessions or {}) do
        local b = busy[info.sessionId]
        local st = "idle"
        if b then
          st = b.activeRunId and "running" or "queued"
          if b.queued and #b.queued > 0 then
            st = st .. ", queued " .. #b.queued
          end
        end
        info.state = st
        table.insert(list, info)
      end
      M._session_cache = list
      cb(nil, list)
    end)
  end)
end

--- `:Crush sessions`: pick a session with vim.ui.select and open it.
function M.sessions()
  if not guard() then
    return
  end
  M.list_sessions(function(err, list)
    if err then
      return util.error(err)
    end
    if #list == 0 then
      return util.notify("no sessions in this workspace yet (:Crush new)")
    end
    vim.ui.select(list, {
      prompt = "crush sessions",
      format_item = function(info)
        return string.format("%s · %s · updated %s · %s", info.title, util.short_id(info.sessionId), util.ago(info.updatedAt), info.state)
      end,
    }, function(choice)
      if choice then
        M.attach(choice.sessionId)
      end
    end)
  end)
end

--- `:Crush model [name]`: sets the session's model (no name: pick from model/list).
function M.model(name, cb)
  if not guard() then
    return
  end
  cb = cb or function() end
  local function set(s, model)
    client().request("session/setModel", { sessionId = s.id, model = model or vim.NIL }, function(err, info)
      if err then
        util.error("session/setModel failed: " .. tostring(err.message))
        return cb(err.message)
      end
      session().set_info(s, info)
      util.notify("model of this session: " .. (info.model or "the daemon's default"))
      cb(nil, info)
    end)
  end
  with_session(nil, function(s)
    if name and vim.trim(name) ~= "" then
      return set(s, vim.trim(name))
    end
    M.list_models(function(err, models)
      if err then
        return util.error(err)
      end
      vim.ui.select(models, { prompt = "crush model" }, function(choice)
        if choice then
          set(s, choice)
        end
      end)
    end)
  end)
end

--- Model names from model/list (usable ones first); cb(err, names).
function M.list_models(cb)
  client().request("model/list", vim.empty_dict(), function(err, res)
    if err then
      return cb(err.message)
    end
    local names = {}
    -- The default may be a model its provider serves without listing it.
    if type(res.default) == "string" and res.default ~= "" then
      table.insert(names, res.default)
    end
    for _, m in ipairs(res.models or {}) do
      if not m.unavailable and m.name ~= res.default then
        table.insert(names, m.name)
      end
    end
    M._model_cache = names
    cb(nil, names)
  end)
end

--- `:Crush permission`: answer a pending permission prompt with vim.ui.select.
function M.permission()
  local s = M.session_of_buf(0)
  local pending = {}
  for _, sx in pairs(session().sessions) do
    if not s or sx == s then
      vim.list_extend(pending, session().pending_prompts(sx))
    end
  end
  if #pending == 0 then
    return util.notify("no permission prompt is waiting")
  end
  if #pending == 1 then
    return session().choose(pending[1].requestId)
  end
  vim.ui.select(pending, {
    prompt = "crush: which request?",
    format_item = function(p)
      return p.params.title or p.params.tool
    end,
  }, function(p)
    if p then
      session().choose(p.requestId)
    end
  end)
end

local function rule_text(r)
  local pattern = type(r.pattern) == "string" and string.format(" %q", r.pattern) or ""
  local whose = r.scope == "session" and type(r.sessionId) == "string" and (" " .. util.short_id(r.sessionId)) or ""
  return string.format(
    "  %s  %s%s  %s%s  (by %s, %s)",
    util.short_id(r.id),
    r.tool,
    pattern,
    r.scope,
    whose,
    tostring(r.createdBy),
    util.ago(r.createdAt)
  )
end

local function decision_text(e)
  local why
  if e.source == "prompt" then
    why = "answered by " .. tostring(e.client)
    if type(e.connection) == "number" then
      why = why .. ", connection " .. e.connection
    end
  else
    why = e.source .. (type(e.rule) == "string" and (": " .. e.rule) or "")
  end
  return string.format("  %s  %s  %s  — %s", util.ago(e.at), e.decision, tostring(e.title), why)
end

--- `:Crush permissions`: the saved permission rules that apply in this workspace (its own, its
--- sessions' and global ones) and its latest decisions, in a scratch buffer. `x` (or `dd`) on a
--- rule removes it — such calls are asked about again —, `r` refreshes, `q` closes.
--- cb(err, buf) once shown.
function M.permissions(cb)
  if not guard() then
    return
  end
  cb = cb or function() end
  session().open_workspace(M.workspace_path(), function(err, w)
    if err then
      util.error(err)
      return cb(err)
    end
    client().request("permission/rules/list", { workspaceId = w.id }, function(lerr, res)
      if lerr then
        util.error("permission/rules/list failed: " .. tostring(lerr.message))
        return cb(lerr.message)
      end
      client().request("permission/log", { workspaceId = w.id, limit = 20 }, function(gerr, log)
        if gerr then
          util.error("permission/log failed: " .. tostring(gerr.message))
          return cb(gerr.message)
        end
        vim.schedule(function()
          local buf = M._permissions_buf
          if not (buf and vim.api.nvim_buf_is_valid(buf)) then
            vim.cmd("botright new")
            buf = vim.api.nvim_get_current_buf()
            vim.bo[buf].buftype = "nofile"
            vim.bo[buf].bufhidden = "wipe"
            vim.bo[buf].swapfile = false
            pcall(vim.api.nvim_buf_set_name, buf, "crush://permissions")
            M._permissions_buf = buf
            local function rule_at_cursor()
              local row = vim.api.nvim_win_get_cursor(0)[1]
              return (vim.b[buf].crush_rules or {})[tostring(row)]
            end
            local function remove()
              local id = rule_at_cursor()
              if not id then
                return util.notify("no rule on this line")
              end
              M.remove_rule(id, function(rerr)
                if not rerr then
                  M.permissions()
                end
              end)
            end
            local o = { buffer = buf, nowait = true, silent = true }
            vim.keymap.set("n", "x", remove, vim.tbl_extend("force", o, { desc = "crush: remove the rule" }))
            vim.keymap.set("n", "dd", remove, vim.tbl_extend("force", o, { desc = "crush: remove the rule" }))
            vim.keymap.set("n", "r", function()
              M.permissions()
            end, vim.tbl_extend("force", o, { desc = "crush: refresh" }))
            vim.keymap.set("n", "q", "<cmd>close<cr>", vim.tbl_extend("force", o, { desc = "crush: close" }))
          end
          local lines = { "Saved permission rules for " .. tostring(w.canonical or w.path) .. "  (x: remove · r: refresh · q: close)" }
          local by_row = {}
          if #(res.rules or {}) == 0 then
            table.insert(lines, "  (none: answer a prompt with \"always allow\" to save one)")
          end
          for _, r in ipairs(res.rules or {}) do
            table.insert(lines, rule_text(r))
            by_row[tostring(#lines)] = r.id
          end
          table.insert(lines, "")
          table.insert(lines, "Latest decisions")
          local entries = log.entries or {}
          if #entries == 0 then
            table.insert(lines, "  (none yet)")
          end
          for i = #entries, 1, -1 do
            table.insert(lines, decision_text(entries[i]))
          end
          vim.bo[buf].modifiable = true
          vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
          vim.bo[buf].modifiable = false
          vim.b[buf].crush_rules = by_row
          cb(nil, buf)
        end)
      end)
    end)
  end)
end

--- Removes a saved permission rule by id; cb(err).
function M.remove_rule(id, cb)
  cb = cb or function() end
  client().request("permission/rules/remove", { id = id }, function(err)
    if err then
      util.error("permission/rules/remove failed: " .. tostring(err.message))
      return cb(err.message)
    end
    util.notify("removed the permission rule " .. util.short_id(id) .. "; such calls are asked about again")
    cb(nil)
  end)
end

--- Status line component: "crush: idle", "crush: running", "crush: running, queued 2",
--- "crush: waiting for permission", "crush: disconnected" (empty before first use).
function M.statusline()
  local ok, s = pcall(M.session_of_buf, 0)
  if not ok or not s then
    return ""
  end
  local c = client().state
  if c.status ~= "ready" then
    return "crush: " .. (c.status == "connecting" and "connecting" or "disconnected")
  end
  local st, queued = session().state_of(s)
  if queued > 0 and st ~= "queued" then
    return string.format("crush: %s, queued %d", st, queued)
  elseif st == "queued" then
    return string.format("crush: queued %d", queued)
  end
  return "crush: " .. st
end

return M
