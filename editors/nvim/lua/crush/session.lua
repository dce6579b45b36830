--- The sessions this Neovim follows: their view (messages, the streaming message, tool calls),
--- cursor (epoch + last seq applied), run state and pending permission prompts, kept in step with
--- the daemon by the algorithm of docs/protocol.md §7 "Sharing sessions between clients":
--- subscribe with afterSeq + epoch, buffer events until the answer, rebuild from
--- session/messages + `streaming` on resync, drop every event whose seq is not above the cursor.
local client = require("crush.client")
local config = require("crush.config")
local util = require("crush.util")

local M = {}

---@type table<string, table> sessionId -> session state
M.sessions = {}
---@type table<string, table> workspace path (as opened) -> { id, path, current }
M.workspaces = {}
---@type table<string, table> runId -> { sessionId, prompt } for runs this client sent
M.runs = {}
---@type table<any, string> daemon request id of a permission/request copy -> requestId
M.request_ids = {}

local render -- set lazily (crush.chat requires this module)
local function chat()
  render = render or require("crush.chat")
  return render
end

local function redraw_status()
  vim.schedule(function()
    pcall(vim.cmd, "redrawstatus!")
  end)
end

local function fire(pattern, data)
  vim.schedule(function()
    pcall(vim.api.nvim_exec_autocmds, "User", { pattern = pattern, data = data, modeline = false })
  end)
end

--- The state of session `id`, created empty on first use.
function M.get(id)
  local s = M.sessions[id]
  if not s then
    s = {
      id = id,
      title = nil,
      model = nil,
      followed = false,
      subscribed = false,
      buffering = false,
      pending_events = {},
      cursor = { epoch = nil, seq = nil },
      loaded = false,
      entries = {},
      by_msg = {},
      tools = {},
      results_seen = {},
      status = { state = "idle", active = nil, queued = {} },
      prompts = {},
      first_dirty = 1,
      buf = nil,
      resyncs = 0,
      replays = 0,
    }
    M.sessions[id] = s
    M.reset_view(s)
  end
  return s
end

function M.reset_view(s)
  s.entries = {}
  s.by_msg = {}
  s.tools = {}
  s.results_seen = {}
  s.first_dirty = 1
  M.add_entry(s, { kind = "header" })
end

function M.add_entry(s, e)
  table.insert(s.entries, e)
  e.idx = #s.entries
  e.dirty = true
  if e.id then
    s.by_msg[e.id] = e
  end
  s.first_dirty = math.min(s.first_dirty, e.idx)
  return e
end

function M.touch(s, e)
  e.dirty = true
  s.first_dirty = math.min(s.first_dirty, e.idx)
end

function M.changed(s)
  chat().schedule_render(s)
  redraw_status()
end

--- "idle" | "running" | "waiting for permission", plus the number of queued prompts.
function M.state_of(s)
  if next(s.prompts) ~= nil then
    return "waiting for permission", #s.status.queued
  end
  if s.status.active then
    return "running", #s.status.queued
  end
  if #s.status.queued > 0 then
    return "queued", #s.status.queued
  end
  return "idle", 0
end

local function remove_value(list, v)
  for i = #list, 1, -1 do
    if list[i] == v then
      table.remove(list, i)
    end
  end
end

local function set_status(s, st)
  st = st or {}
  s.status.active = st.activeRunId
  s.status.queued = vim.deepcopy(st.queued or {})
  s.status.state = st.state or "idle"
end

local function decode_input(input)
  if type(input) == "string" then
    local ok, v = pcall(vim.json.decode, input, { luanil = { object = true } })
    if ok then
      return v
    end
  end
  return input
end

local function assistant(s, id, model)
  local e = s.by_msg[id]
  if not e then
    e = M.add_entry(s, { kind = "assistant", id = id, model = model, parts = {} })
  end
  return e
end

local function add_tool_part(s, e, id, name, input)
  local part = s.tools[id]
  if part then
    return part
  end
  part = { type = "tool", id = id, name = name, input = decode_input(input), status = "running" }
  part.entry = e
  table.insert(e.parts, part)
  s.tools[id] = part
  return part
end

local function attach_result(s, r)
  local part = s.tools[r.toolCallId]
  if not part then
    local e = M.add_entry(s, { kind = "assistant", parts = {} })
    part = add_tool_part(s, e, r.toolCallId, r.name, nil)
  end
  part.status = r.status or (r.isError and "failed" or "completed")
  part.output = r.content or r.output
  part.metadata = r.metadata
  s.results_seen[r.toolCallId] = true
  M.touch(s, part.entry)
end

local function append_delta(s, e, kind, text)
  local last = e.parts[#e.parts]
  if last and last.type == kind then
    last.text = last.text .. text
  else
    table.insert(e.parts, { type = kind, text = text })
  end
  M.touch(s, e)
end

--- Attaches every pending prompt of `s` to its tool call (or shows it on its own).
local function place_prompts(s)
  for _, p in pairs(s.prompts) do
    local part = s.tools[p.params.toolCallId]
    if part then
      if p.entry and p.entry.kind == "permission" then
        -- Shown on its own until its tool call was known: now it moves under the call.
        p.entry.hidden = true
        M.touch(s, p.entry)
      end
      part.permission = p
      p.entry = part.entry
      M.touch(s, part.entry)
    elseif not (p.entry and s.entries[p.entry.idx] == p.entry) then
      p.entry = M.add_entry(s, { kind = "permission", prompt = p })
    end
  end
end

--- The note where a model-written summary of older messages stands.
local function summary_note(messages)
  if messages then
    return string.format("%d older messages summarised to fit the context window", messages)
  end
  return "older messages summarised to fit the context window"
end

--- Rebuilds the view from stored messages and the `streaming` message of a subscribe answer.
local function rebuild(s, sub, page)
  M.reset_view(s)
  for _, m in ipairs(page.messages or {}) do
    local parts = type(m.parts) == "table" and m.parts or {}
    if m.role == "user" then
      local text, atts = {}, {}
      for _, p in ipairs(parts) do
        if p.type == "text" then
          table.insert(text, p.text)
        elseif p.type == "attachment" then
          table.insert(atts, p)
        elseif p.type == "image" then
          -- Listed like an attachment; the data itself is not shown.
          table.insert(atts, { name = p.name or ("image (" .. tostring(p.mimeType) .. ")") })
        end
      end
      M.add_entry(
        s,
        { kind = "user", id = m.messageId, text = table.concat(text, "\n"), attachments = atts, reverted = m.reverted }
      )
    elseif m.role == "assistant" then
      local model = m.provider and m.model and (m.provider .. "/" .. m.model) or m.model
      local e = M.add_entry(s, {
        kind = "assistant",
        id = m.messageId,
        run = m.runId,
        model = model,
        parts = {},
        finish = m.finishReason,
        error = m.error,
        reverted = m.reverted,
      })
      for _, p in ipairs(parts) do
        if p.type == "text" or p.type == "reasoning" then
          table.insert(e.parts, { type = p.type, text = p.text or p.reasoning or "" })
        elseif p.type == "toolCall" then
          add_tool_part(s, e, p.id, p.name, p.input)
        end
      end
    elseif m.role == "tool" then
      for _, p in ipairs(parts) do
        if p.type == "toolResult" then
          attach_result(s, p)
        end
      end
    elseif m.role == "system" then
      for _, p in ipairs(parts) do
        if p.type == "summary" then
          M.add_entry(s, { kind = "note", id = m.messageId, text = summary_note(p.messages) })
        end
      end
    end
  end
  local st = sub.streaming
  if st and st.messageId then
    s.streaming_rebuilds = (s.streaming_rebuilds or 0) + 1
    local e = s.by_msg[st.messageId]
    if e then
      e.parts = {}
      e.finish = nil
    else
      e = assistant(s, st.messageId, nil)
    end
    for _, p in ipairs(st.parts or {}) do
      if p.type == "text" or p.type == "reasoning" then
        table.insert(e.parts, { type = p.type, text = p.text or p.reasoning or "" })
      elseif p.type == "toolCall" then
        s.tools[p.id] = nil
        add_tool_part(s, e, p.id, p.name, p.input)
      elseif p.type == "toolResult" then
        attach_result(s, p)
      end
    end
    M.touch(s, e)
  end
  s.loaded = true
  s.resyncs = s.resyncs + 1
end

local resolve_prompt

--- Whether an answer of run `run_id` already shows that it was cut short.
function M.run_marked(s, run_id)
  for _, e in ipairs(s.entries) do
    if e.kind == "assistant" and e.run == run_id and (e.finish == "canceled" or e.finish == "interrupted") then
      return true
    end
  end
  return false
end

--- Reads the session's title and model again (`session/get`) and redraws its header when they
--- changed.
function M.refresh_info(s)
  if not client.is_ready() then
    return
  end
  local asked_at = s.info_version
  client.request_now("session/get", { sessionId = s.id }, function(err, info)
    if err or type(info) ~= "table" then
      return
    end
    if s.info_version ~= asked_at then
      -- Newer news arrived while this read was on its way (a `sessionUpdated` event, a
      -- setModel answer): its title and model may be older than what we show. Take the usage.
      info = { title = s.title, model = s.model, usage = info.usage, workspaceId = info.workspaceId }
    end
    M.set_info(s, info)
  end)
end

--- Takes the title, model and usage of a `SessionInfo` (or of a `sessionUpdated` event, which
--- has no usage); redraws the header when they changed.
function M.set_info(s, info)
  local usage = info.usage or s.usage
  local changed = s.title ~= info.title or s.model ~= info.model or not vim.deep_equal(s.usage, usage)
  local retitled = s.title ~= info.title
  s.info_version = (s.info_version or 0) + 1
  s.title = info.title
  s.model = info.model
  s.usage = usage
  s.workspace_id = info.workspaceId or s.workspace_id
  if changed then
    if s.entries[1] then
      M.touch(s, s.entries[1])
    end
    M.changed(s)
    if retitled then
      fire("CrushSessionTitle", { sessionId = s.id, title = s.title })
    end
  end
end

--- Applies one $/sessionUpdate event (already known to be newer than the cursor).
local function apply(s, ev)
  local k = ev.kind
  if k == "runQueued" then
    if not vim.tbl_contains(s.status.queued, ev.runId) then
      table.insert(s.status.queued, ev.runId)
    end
  elseif k == "runStarted" then
    s.status.active = ev.runId
    remove_value(s.status.queued, ev.runId)
  elseif k == "runFolded" then
    remove_value(s.status.queued, ev.runId)
  elseif k == "cancelRequested" then
    for _, r in ipairs(ev.runIds or {}) do
      remove_value(s.status.queued, r)
    end
  elseif k == "runFinished" then
    remove_value(s.status.queued, ev.runId)
    if s.status.active == ev.runId then
      s.status.active = nil
    end
    if ev.state == "failed" then
      M.add_entry(s, { kind = "note", text = "run failed: " .. tostring(ev.error or "unknown error") })
    elseif (ev.state == "cancelled" or ev.state == "interrupted") and not M.run_marked(s, ev.runId) then
      -- One mark per outcome: an answer cut short already says so; a run cancelled before it
      -- answered says it here.
      M.add_entry(s, { kind = "note", text = ev.state == "cancelled" and "cancelled" or "interrupted" })
    end
    -- A turn adds to the session's usage: read its totals (and title) again.
    M.refresh_info(s)
  elseif k == "reverted" or k == "unreverted" then
    -- Messages were hidden from the model or shown again: read them again to mark them.
    client.request_now("session/messages", { sessionId = s.id, limit = config.options.history_limit }, function(err, page)
      if not err and page then
        rebuild(s, {}, page)
        M.changed(s)
      end
    end)
  elseif k == "compacted" then
    -- A summary was written (an event without one only trimmed a request: nothing to show).
    if ev.summaryMessageId and not s.by_msg[ev.summaryMessageId] then
      M.add_entry(s, { kind = "note", id = ev.summaryMessageId, text = summary_note(nil) })
    end
  elseif k == "sessionUpdated" then
    -- Its first prompt titled the session, or a client renamed it or changed its model.
    M.set_info(s, { title = ev.title, model = ev.model })
  elseif k == "userMessage" then
    if not s.by_msg[ev.messageId] then
      -- The event has no attachments; ours are known from the send.
      local run = M.runs[ev.runId]
      local atts = run and run.attachments or {}
      M.add_entry(s, { kind = "user", id = ev.messageId, text = ev.text or "", attachments = atts })
    end
  elseif k == "assistantStarted" then
    local e = s.by_msg[ev.messageId]
    if e then
      -- Read from session/messages after the subscribe answer: the events rebuild it.
      e.parts, e.finish, e.error = {}, nil, nil
      e.model = ev.model
      M.touch(s, e)
    else
      e = assistant(s, ev.messageId, ev.model)
    end
    e.run = ev.runId
  elseif k == "textDelta" then
    append_delta(s, assistant(s, ev.messageId), "text", ev.text or "")
  elseif k == "reasoningDelta" then
    append_delta(s, assistant(s, ev.messageId), "reasoning", ev.text or "")
  elseif k == "retrying" then
    M.add_entry(
      s,
      {
        kind = "note",
        text = string.format(
          "retrying %s/%s in %s: %s",
          tostring(ev.attempt),
          tostring(ev.maxAttempts),
          util.human_ms(ev.delayMs),
          tostring(ev.error)
        ),
      }
    )
  elseif k == "toolCallStarted" then
    local e = assistant(s, ev.messageId)
    add_tool_part(s, e, ev.toolCallId, ev.tool, ev.input)
    M.touch(s, e)
    place_prompts(s)
  elseif k == "permissionRequested" then
    local part = s.tools[ev.toolCallId]
    if part then
      part.status = "waiting for permission"
      part.title = ev.title
      M.touch(s, part.entry)
    end
    if not s.prompts[ev.requestId] and not (part and part.permission and part.permission.requestId == ev.requestId) then
      -- We missed the permission/request (not subscribed at that moment): it can still be
      -- answered with permission/respond.
      M.add_prompt({
        requestId = ev.requestId,
        sessionId = s.id,
        runId = ev.runId,
        toolCallId = ev.toolCallId,
        tool = ev.tool,
        title = ev.title,
        input = part and part.input,
      })
    end
  elseif k == "permissionResolved" then
    resolve_prompt(s, ev.requestId, ev.decision, ev.by)
  elseif k == "toolCallFinished" then
    -- A result already read from session/messages (after a rebuild) is not shown twice.
    if not s.results_seen[ev.toolCallId] then
      if not s.tools[ev.toolCallId] then
        add_tool_part(s, assistant(s, ev.messageId), ev.toolCallId, ev.tool, nil)
      end
      attach_result(s, ev)
    end
  elseif k == "messageFinished" then
    local e = s.by_msg[ev.messageId]
    if e then
      e.finish = ev.finishReason
      e.error = ev.error
      M.touch(s, e)
    end
  end
end

local function accept(s, ev)
  local seq = ev.seq
  if type(seq) == "number" and s.cursor.seq and seq <= s.cursor.seq then
    return -- already applied (a replay behind the live stream)
  end
  apply(s, ev)
  if type(seq) == "number" then
    s.cursor.seq = seq
  end
end

--- Subscribes `s` on the current connection: replay from the cursor, or rebuild on resync.
function M.subscribe(s, cb)
  cb = cb or function() end
  local params = { sessionId = s.id }
  local with_cursor = s.loaded and s.cursor.seq ~= nil and s.cursor.epoch ~= nil
  if with_cursor then
    params.afterSeq = s.cursor.seq
    params.epoch = s.cursor.epoch
  end
  s.buffering = true
  s.pending_events = {}
  s.subscribed = true
  local gen = client.state.gen
  client.request_now("session/subscribe", params, function(err, res)
    if gen ~= client.state.gen then
      return
    end
    if err then
      s.buffering = false
      s.subscribed = false
      s.pending_events = {}
      if err.code == -32011 then
        s.followed = false
        -- Only a session this chat showed can have been deleted; otherwise it never existed.
        M.add_entry(s, { kind = "note", text = s.loaded and "this session was deleted" or "no such session" })
        M.changed(s)
      end
      return cb(err)
    end
    local function finish()
      s.cursor.epoch = res.epoch
      local evs = s.pending_events
      s.pending_events = {}
      s.buffering = false
      -- Replayed events (seq <= res.seq) first, then the status as of res.seq, then live ones.
      for _, ev in ipairs(evs) do
        if ev.seq <= res.seq then
          accept(s, ev)
        end
      end
      if with_cursor and not res.resync then
        set_status(s, res.status)
        s.replays = s.replays + 1
      end
      local pending = {}
      for _, p in ipairs((res.status or {}).pendingPermissions or {}) do
        pending[p.requestId] = true
        M.add_prompt(p, nil, true)
      end
      for rid, p in pairs(s.prompts) do
        if not pending[rid] and p.state ~= "answering" then
          resolve_prompt(s, rid, "resolved", nil, true)
        end
      end
      for _, ev in ipairs(evs) do
        if ev.seq > res.seq then
          accept(s, ev)
        end
      end
      M.changed(s)
      cb(nil, res)
    end
    if with_cursor and not res.resync then
      return finish()
    end
    client.request_now(
      "session/messages",
      { sessionId = s.id, limit = config.options.history_limit },
      function(merr, page)
        if gen ~= client.state.gen then
          return
        end
        rebuild(s, res, merr and { messages = {} } or page)
        s.cursor.seq = res.seq
        set_status(s, res.status)
        place_prompts(s)
        finish()
      end
    )
  end)
  client.request_now("session/get", { sessionId = s.id }, function(err, info)
    if not err and info then
      M.set_info(s, info)
      if s.entries[1] then
        M.touch(s, s.entries[1])
      end
      M.changed(s)
    end
  end)
end

--- Follows session `id` (subscribing now if connected, and again after every reconnect).
function M.follow(id, cb)
  local s = M.get(id)
  s.followed = true
  if s.subscribed then
    return cb and cb(nil, s)
  end
  client.ensure(function(e)
    if e then
      return cb and cb(e)
    end
    if s.subscribed then
      return cb and cb(nil, s)
    end
    M.subscribe(s, function(err)
      if cb then
        cb(err and err.message or nil, s)
      end
    end)
  end)
end

--- Registers a permission prompt (from permission/request, pendingPermissions or the event).
function M.add_prompt(params, daemon_id, quiet)
  local s = M.sessions[params.sessionId]
  if not s then
    return
  end
  if daemon_id ~= nil then
    M.request_ids[daemon_id] = params.requestId
  end
  local p = s.prompts[params.requestId]
  if p then
    -- Fill in what an earlier, shorter source (the event) lacked.
    for k, v in pairs(params) do
      if p.params[k] == nil then
        p.params[k] = v
      end
    end
    M.touch(s, p.entry or s.entries[1])
    return p
  end
  p = { requestId = params.requestId, params = vim.deepcopy(params), state = "pending", session = s.id }
  s.prompts[params.requestId] = p
  place_prompts(s)
  M.changed(s)
  fire("CrushPermissionRequest", vim.deepcopy(params))
  if not quiet then
    vim.schedule(function()
      if config.options.notify and not chat().visible(s) then
        util.notify(
          string.format("permission needed: %s (:Crush permission to answer)", params.title or params.tool or "?"),
          vim.log.levels.WARN
        )
      end
      if config.options.permission_select then
        M.choose(params.requestId)
      end
    end)
  end
  return p
end

local DECISION_TEXT = {
  allow = "allowed once",
  allowSession = "allowed for this session",
  allowAlways = "always allowed (a rule was saved)",
  deny = "denied",
  cancelled = "withdrawn (the run was cancelled)",
  withdrawn = "withdrawn",
  resolved = "answered elsewhere",
}

resolve_prompt = function(s, request_id, decision, by, quiet)
  local p = s.prompts[request_id]
  if not p then
    return
  end
  s.prompts[request_id] = nil
  p.state = "resolved"
  p.decision = decision
  p.by = by
  local what = DECISION_TEXT[decision] or tostring(decision)
  if by and by ~= "cancel" then
    p.note = string.format("permission %s by %s", what, by)
  else
    p.note = "permission " .. what
  end
  local part = s.tools[p.params.toolCallId]
  if part then
    part.permission = p
    if part.status == "waiting for permission" then
      part.status = decision == "deny" and "denied" or (decision == "cancelled" and "cancelled" or "running")
    end
    M.touch(s, part.entry)
  end
  if p.entry and s.entries[p.entry.idx] == p.entry then
    M.touch(s, p.entry)
  end
  M.changed(s)
  if not quiet and by and by ~= client.name() and not p.answered_here then
    util.notify(string.format("%s: %s", p.params.title or "permission", p.note))
  end
end

function M.resolve_prompt(s, request_id, decision, by)
  resolve_prompt(s, request_id, decision, by)
end

local function find_prompt(request_id)
  for _, s in pairs(M.sessions) do
    if s.prompts[request_id] then
      return s, s.prompts[request_id]
    end
  end
end

--- Sends `permission/respond` for prompt `p` of session `s`. Someone else answering first (or
--- the request being gone) settles the prompt with what the daemon says; any other error puts
--- the prompt back to pending and is passed to cb(err) (the daemon kept the request pending).
local function respond(s, p, params, cb)
  p.state = "answering"
  p.answered_here = true
  client.request("permission/respond", params, function(err)
    if not err then
      resolve_prompt(s, p.requestId, params.decision, client.name())
      return cb(nil)
    end
    if err.code == -32017 then
      -- Someone else was first: the message says how and by whom.
      local how, who = tostring(err.message):match("resolved: (%S+) by (.+)$")
      p.answered_here = false
      resolve_prompt(s, p.requestId, how or "resolved", who)
      return cb(nil)
    elseif err.code == -32016 then
      resolve_prompt(s, p.requestId, "withdrawn", nil)
      return cb(nil)
    end
    p.state = "pending"
    p.answered_here = false
    cb(err)
  end)
end

--- Answers a pending prompt: decision is "allow", "allowSession", "allowAlways" or "deny";
--- for "allowAlways", `scope` ("session", "workspace", "global": one of the request's `scopes`)
--- and `pattern` (nil: the request's suggested pattern) are the rule the daemon saves. To let
--- the user edit the pattern first, use `M.always`.
function M.answer(request_id, decision, cb, scope, pattern)
  cb = cb or function() end
  local s, p = find_prompt(request_id)
  if not p then
    return cb("no pending permission request " .. tostring(request_id))
  end
  local params = { requestId = request_id, decision = decision }
  if decision == "allowAlways" then
    params.scope = scope
    params.pattern = pattern
  end
  respond(s, p, params, function(err)
    if err then
      util.error("permission/respond failed: " .. tostring(err.message))
      return cb(err.message)
    end
    cb(nil)
  end)
end

local SCOPE_TEXT = { session = "in this session", workspace = "in this workspace", global = "everywhere" }

--- What a rule's pattern is, for the input prompt.
local PATTERN_TEXT = {
  bash = "commands starting with",
  write = "files matching (a glob in the workspace)",
  edit = "files matching (a glob in the workspace)",
}

--- Answers "always allow" in `scope`, asking for the rule's pattern first (vim.ui.input, filled
--- in with `default` or the daemon's suggestion). A cancelled or empty input answers nothing:
--- the prompt stays pending. A pattern the daemon refuses (-32602) is said with the daemon's
--- reason and asked for again, filled in with what was refused. A prompt without a suggested
--- pattern (an MCP tool: the rule takes none) is answered at once.
--- cb(err) once the prompt is answered, or err "not answered" when the user gave up.
function M.always(request_id, scope, cb, default)
  cb = cb or function() end
  local s, p = find_prompt(request_id)
  if not p or p.state ~= "pending" then
    return cb("no pending permission request " .. tostring(request_id))
  end
  local suggested = p.params.suggestedPattern
  if type(suggested) ~= "string" then
    return M.answer(request_id, "allowAlways", cb, scope)
  end
  local tool = tostring(p.params.tool)
  vim.ui.input({
    prompt = string.format(
      "crush: always allow %s %s, %s: ",
      tool,
      SCOPE_TEXT[scope] or scope,
      PATTERN_TEXT[tool] or "pattern"
    ),
    default = default or suggested,
  }, function(pattern)
    pattern = pattern and vim.trim(pattern)
    if p.state ~= "pending" or s.prompts[request_id] ~= p then
      return cb("the prompt was answered meanwhile")
    end
    if not pattern or pattern == "" then
      util.notify("no rule saved: the prompt is still waiting for an answer")
      return cb("not answered")
    end
    respond(s, p, { requestId = request_id, decision = "allowAlways", scope = scope, pattern = pattern }, function(err)
      if not err then
        return cb(nil)
      end
      if err.code ~= -32602 then
        util.error("permission/respond failed: " .. tostring(err.message))
        return cb(err.message)
      end
      -- The daemon's reason ("pattern: the command prefix ... has shell syntax ..."); ask again.
      util.error("rule not saved: " .. tostring(err.message):gsub("^invalid params: ", ""))
      vim.schedule(function()
        M.always(request_id, scope, cb, pattern)
      end)
    end)
  end)
end

--- The answers a prompt offers, `{ decision, label, scope }`: once, the tool for this session,
--- a saved rule in each scope the daemon offers, deny.
function M.choices(params)
  local items = {
    { "allow", "Allow once" },
    { "allowSession", "Allow for this session" },
  }
  local what = params.tool or "this tool"
  if type(params.suggestedPattern) == "string" then
    what = string.format("%s %q", what, params.suggestedPattern)
  end
  for _, scope in ipairs(params.scopes or {}) do
    if SCOPE_TEXT[scope] then
      table.insert(items, { "allowAlways", string.format("Always allow %s %s", what, SCOPE_TEXT[scope]), scope })
    end
  end
  table.insert(items, { "deny", "Deny" })
  return items
end

--- Offers the answers of a prompt with vim.ui.select.
function M.choose(request_id)
  local _, p = find_prompt(request_id)
  if not p then
    return
  end
  local items = M.choices(p.params)
  vim.ui.select(items, {
    prompt = "crush: " .. (p.params.title or p.params.tool or "permission"),
    format_item = function(it)
      return it[2]
    end,
  }, function(choice)
    if not choice or p.state ~= "pending" then
      return
    end
    if choice[1] == "allowAlways" then
      M.always(request_id, choice[3])
    else
      M.answer(request_id, choice[1], nil, choice[3])
    end
  end)
end

--- Every pending prompt of session `s`, oldest first.
function M.pending_prompts(s)
  local list = {}
  for _, p in pairs(s.prompts) do
    if p.state == "pending" then
      table.insert(list, p)
    end
  end
  table.sort(list, function(a, b)
    return a.requestId < b.requestId
  end)
  return list
end

-- Handlers for what the daemon says ------------------------------------------------------

local function on_notification(method, params)
  if method == "$/sessionUpdate" then
    local s = M.sessions[params.sessionId]
    if not s or not s.subscribed then
      return
    end
    if s.buffering then
      table.insert(s.pending_events, params)
    else
      accept(s, params)
      M.changed(s)
    end
  elseif method == "$/runComplete" then
    local run = M.runs[params.runId]
    local s = M.sessions[params.sessionId]
    if s and s.status.active == params.runId then
      s.status.active = nil
      M.changed(s)
    end
    if run then
      M.runs[params.runId] = nil
    end
    fire("CrushRunComplete", vim.deepcopy(params))
    redraw_status()
  elseif method == "$/permissionResolved" then
    local s = M.sessions[params.sessionId]
    if s then
      resolve_prompt(s, params.requestId, params.decision, params.by)
    end
  elseif method == "$/cancelRequest" then
    local rid = M.request_ids[params.id]
    if rid then
      M.request_ids[params.id] = nil
      local s, p = find_prompt(rid)
      -- After a `deferred` answer this is not expected; $/permissionResolved says who.
      if s and p and p.state ~= "answering" then
        resolve_prompt(s, rid, "withdrawn", nil, true)
      end
    end
  elseif method == "$/daemonShutdown" then
    util.notify("crushd is shutting down (" .. tostring(params.reason) .. ")")
  end
end

local function on_request(method, params)
  if method == "permission/request" then
    -- vim.lsp.rpc answers at once with what this returns: defer, show the prompt, and answer
    -- later with permission/respond.
    -- (vim.lsp.rpc calls this handler on the main loop, from a scheduled callback.)
    M.add_prompt(params, nil)
    return { decision = "deferred" }
  end
  return nil
end

local function on_ready()
  -- Claims again (the grace period may have passed or the daemon restarted), then resubscribe.
  for path, w in pairs(M.workspaces) do
    client.request_now("workspace/open", { path = path }, function(err, info)
      if not err and info then
        w.id = info.workspaceId
      end
    end)
  end
  for _, s in pairs(M.sessions) do
    s.subscribed = false
    if s.followed then
      M.subscribe(s)
    end
  end
  redraw_status()
end

local function on_closed()
  for _, s in pairs(M.sessions) do
    s.subscribed = false
    s.buffering = false
    s.pending_events = {}
  end
  redraw_status()
end

client.handlers.notification = on_notification
client.handlers.request = on_request
client.handlers.ready = on_ready
client.handlers.closed = on_closed
client.handlers.wants_connection = function()
  for _, s in pairs(M.sessions) do
    if s.followed then
      return true
    end
  end
  return false
end

--- Opens the workspace at `path` (claiming it); cb(err, workspace).
function M.open_workspace(path, cb)
  if not path then
    -- `remote` without `remote.workspace`: nothing over there to default to.
    local _, why = require("crush").workspace_path()
    return cb(why or "no workspace")
  end
  client.request("workspace/open", { path = path }, function(err, info)
    if err then
      return cb(err.message)
    end
    local w = M.workspaces[path] or { path = path }
    w.id = info.workspaceId
    w.canonical = info.path
    w.busy = info.busySessions or {}
    M.workspaces[path] = w
    cb(nil, w)
  end)
end

return M
