--- Chat buffers: one markdown buffer per session, rendered from the session's view. Only the
--- entries that changed are rendered again, and only lines that differ are written, so a
--- streaming reply appends at the end. A window whose cursor is on the last line follows the
--- text; every other window keeps its cursor and scroll position exactly. Tool calls are folded
--- (lines starting with "▸ " open a fold, lines starting with "│" belong to it); pending
--- permission prompts are never folded.
local config = require("crush.config")

local M = {}

M.ns = vim.api.nvim_create_namespace("crush.chat")

local function session()
  return require("crush.session")
end

--- Fold level of line `lnum` of a chat buffer (for 'foldexpr').
function M.foldexpr(lnum)
  local line = vim.fn.getline(lnum or vim.v.lnum)
  if line:sub(1, #"▸ ") == "▸ " then
    return ">1"
  elseif line:sub(1, #"│") == "│" then
    return "1"
  end
  return "0"
end

--- Fold text: the header line and the number of lines folded.
function M.foldtext()
  local n = vim.v.foldend - vim.v.foldstart
  return string.format("%s  [%d more line%s]", vim.fn.getline(vim.v.foldstart), n, n == 1 and "" or "s")
end

local function set_win_options(win)
  local wo = vim.wo[win]
  wo.foldmethod = "expr"
  wo.foldexpr = "v:lua.require'crush.chat'.foldexpr(v:lnum)"
  wo.foldtext = "v:lua.require'crush.chat'.foldtext()"
  wo.foldlevel = 0
  wo.foldenable = true
  wo.wrap = true
  wo.linebreak = true
  wo.number = false
  wo.relativenumber = false
  wo.spell = false
end

local function map_keys(buf, s)
  local keys = config.options.keys or {}
  local function current_prompt()
    local sess = session()
    local pending = sess.pending_prompts(s)
    if #pending == 0 then
      vim.notify("crush: no permission prompt is waiting in this session", vim.log.levels.INFO)
      return nil
    end
    -- The prompt under the cursor, else the oldest.
    local row = vim.api.nvim_win_get_cursor(0)[1] - 1
    for _, p in ipairs(pending) do
      if p.rows and row >= p.rows[1] and row < p.rows[2] then
        return p
      end
    end
    return pending[1]
  end
  local function answer(decision)
    return function()
      local p = current_prompt()
      if p then
        session().answer(p.requestId, decision)
      end
    end
  end
  local maps = {
    prompt = {
      function()
        require("crush").prompt(s.id)
      end,
      "crush: send a prompt",
    },
    allow = { answer("allow"), "crush: allow once" },
    allow_session = { answer("allowSession"), "crush: allow for this session" },
    allow_workspace = {
      function()
        local p = current_prompt()
        if p and vim.tbl_contains(p.params.scopes or {}, "workspace") then
          -- Asks for the rule's pattern first, filled in with the daemon's suggestion.
          session().always(p.requestId, "workspace")
        end
      end,
      "crush: always allow (a rule for this workspace; edit its pattern first)",
    },
    deny = { answer("deny"), "crush: deny" },
    choose = {
      function()
        local p = current_prompt()
        if p then
          session().choose(p.requestId)
        end
      end,
      "crush: answer the permission prompt",
    },
    cancel = {
      function()
        require("crush").cancel(s.id)
      end,
      "crush: cancel the session's work",
    },
  }
  for name, m in pairs(maps) do
    local lhs = keys[name]
    if lhs then
      vim.keymap.set("n", lhs, m[1], { buffer = buf, desc = m[2], nowait = true, silent = true })
    end
  end
end

--- The chat buffer of session state `s`, created on first use.
function M.buf(s)
  if s.buf and vim.api.nvim_buf_is_valid(s.buf) then
    return s.buf
  end
  local buf = vim.api.nvim_create_buf(false, true)
  s.buf = buf
  pcall(vim.api.nvim_buf_set_name, buf, "crush://session/" .. s.id)
  local bo = vim.bo[buf]
  bo.buftype = "nofile"
  bo.bufhidden = "hide"
  bo.swapfile = false
  bo.modifiable = false
  bo.filetype = "markdown"
  vim.b[buf].crush_session = s.id
  map_keys(buf, s)
  vim.api.nvim_create_autocmd("BufWinEnter", {
    buffer = buf,
    callback = function()
      set_win_options(vim.api.nvim_get_current_win())
      -- A session followed elsewhere may have changed meanwhile: read its title again.
      session().refresh_info(s)
    end,
  })
  vim.api.nvim_create_autocmd("BufWipeout", {
    buffer = buf,
    callback = function()
      if s.buf == buf then
        s.buf = nil
      end
    end,
  })
  s.first_dirty = 1
  for _, e in ipairs(s.entries) do
    e.dirty = true
  end
  M.render(s)
  return buf
end

--- Whether the chat of `s` is shown in a window.
function M.visible(s)
  return s.buf ~= nil and vim.api.nvim_buf_is_valid(s.buf) and #vim.fn.win_findbuf(s.buf) > 0
end

--- Opens (or focuses) the chat of `s` in the current tab page.
function M.open(s, how)
  local buf = M.buf(s)
  for _, w in ipairs(vim.api.nvim_tabpage_list_wins(0)) do
    if vim.api.nvim_win_get_buf(w) == buf then
      vim.api.nvim_set_current_win(w)
      return w
    end
  end
  how = how or config.options.window
  if how == "split" then
    vim.cmd("split")
  elseif how == "tab" then
    vim.cmd("tabnew")
  elseif how ~= "current" then
    vim.cmd("vsplit")
  end
  local win = vim.api.nvim_get_current_win()
  vim.api.nvim_win_set_buf(win, buf)
  set_win_options(win)
  pcall(vim.api.nvim_win_set_cursor, win, { vim.api.nvim_buf_line_count(buf), 0 })
  return win
end

-- Rendering -------------------------------------------------------------------------------

local function push_text(out, text, prefix)
  for _, l in ipairs(vim.split(text or "", "\n", { plain = true })) do
    table.insert(out, (prefix or "") .. l)
  end
end

local function chomp(text)
  return (tostring(text or ""):gsub("\n$", ""))
end

local function fence_for(name)
  local ext = tostring(name or ""):match("%.([%w_]+):?%d*%-?%d*$")
  return ext or ""
end

local function input_lines(out, input)
  if type(input) ~= "table" then
    if input ~= nil then
      push_text(out, "input: " .. tostring(input), "│ ")
    end
    return
  end
  local keys = vim.tbl_keys(input)
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = input[k]
    if type(v) == "string" and v:find("\n") then
      table.insert(out, "│ " .. k .. ":")
      push_text(out, v, "│   ")
    else
      table.insert(out, "│ " .. k .. ": " .. (type(v) == "string" and v or vim.json.encode(v)))
    end
  end
end

local function tool_summary(part)
  local i = type(part.input) == "table" and part.input or {}
  local what = part.title or (part.permission and part.permission.params.title) or i.path or i.command or i.pattern
  return (part.name or "tool") .. (what and (": " .. tostring(what)) or "")
end

local function prompt_lines(out, p)
  local params = p.params
  local first = #out
  table.insert(out, "> **Permission needed** · " .. tostring(params.title or params.tool))
  if params.tool == "bash" and type(params.input) == "table" and params.input.command then
    table.insert(out, ">")
    push_text(out, "$ " .. params.input.command, ">     ")
  end
  if params.diff and params.diff ~= "" then
    table.insert(out, "")
    table.insert(out, "```diff")
    push_text(out, chomp(params.diff))
    table.insert(out, "```")
    table.insert(out, "")
  end
  local keys = config.options.keys or {}
  local hints = {}
  local can_save = vim.tbl_contains(params.scopes or {}, "workspace")
  local always = "always allow in this workspace"
  if type(params.suggestedPattern) == "string" then
    always = string.format("always allow %q here", params.suggestedPattern)
  end
  for _, k in ipairs({
    { "allow", "allow once" },
    { "allow_session", "allow for this session" },
    { "allow_workspace", always },
    { "deny", "deny" },
    { "choose", "choose…" },
  }) do
    if keys[k[1]] and (k[1] ~= "allow_workspace" or can_save) then
      table.insert(hints, "[" .. keys[k[1]] .. "] " .. k[2])
    end
  end
  table.insert(out, "> " .. (#hints > 0 and table.concat(hints, "  ") or ":Crush permission to answer"))
  table.insert(out, "")
  p.rel_rows = { first, #out }
end

--- The session's totals for its header: ` · 1250 tokens · $0.0012` (no cost when its price is
--- unknown: `vim.NIL`), or nothing before the daemon reported any.
local function usage_text(u)
  if type(u) ~= "table" then
    return ""
  end
  local tokens = (tonumber(u.inputTokens) or 0) + (tonumber(u.outputTokens) or 0)
  if tokens == 0 then
    return ""
  end
  local text = " · " .. tokens .. " tokens"
  if type(u.cost) == "number" then
    text = text .. string.format(" · $%.4f", u.cost)
  end
  return text
end

local function entry_lines(s, e)
  local out = {}
  if e.hidden then
    return out
  end
  if e.kind == "header" then
    table.insert(out, "# " .. (s.title or "crush session"))
    table.insert(out, "")
    -- The short id, as crushctl shows it (`:Crush attach` and crushctl accept it).
    local short = require("crush.util").short_id(s.id)
    table.insert(out, "_session " .. short .. (s.model and (" · model " .. s.model) or "") .. usage_text(s.usage) .. "_")
    table.insert(out, "")
  elseif e.kind == "user" then
    table.insert(out, "## You" .. (e.reverted and " · undone" or ""))
    table.insert(out, "")
    if e.text and e.text ~= "" then
      push_text(out, e.text)
    end
    for _, a in ipairs(e.attachments or {}) do
      table.insert(out, "")
      table.insert(out, "📎 " .. (a.name or "attachment"))
      table.insert(out, "```" .. fence_for(a.name))
      push_text(out, chomp(a.text))
      table.insert(out, "```")
    end
    table.insert(out, "")
  elseif e.kind == "assistant" then
    table.insert(out, "## Assistant" .. (e.model and (" · " .. e.model) or "") .. (e.reverted and " · undone" or ""))
    table.insert(out, "")
    local prev
    for _, part in ipairs(e.parts) do
      if part.type == "text" then
        if prev and prev ~= "text" then
          table.insert(out, "")
        end
        push_text(out, part.text)
      elseif part.type == "reasoning" then
        table.insert(out, "▸ reasoning")
        push_text(out, part.text, "│ ")
      elseif part.type == "tool" then
        if prev == "text" then
          table.insert(out, "")
        end
        local status = part.status or "running"
        if part.permission and part.permission.state ~= "resolved" then
          status = "waiting for permission"
        elseif part.permission then
          status = status .. " · " .. part.permission.note
        end
        table.insert(out, "▸ " .. tool_summary(part) .. " · " .. status)
        input_lines(out, part.input)
        local p = part.permission
        if p and p.state ~= "resolved" then
          prompt_lines(out, p)
        elseif p then
          table.insert(out, "│ " .. p.note)
        end
        local diff = type(part.metadata) == "table" and part.metadata.diff
        if type(diff) == "string" and diff ~= "" then
          table.insert(out, "│ ```diff")
          push_text(out, chomp(diff), "│ ")
          table.insert(out, "│ ```")
        end
        if part.output then
          table.insert(out, "│ result (" .. tostring(part.status) .. "):")
          push_text(out, chomp(tostring(part.output)), "│   ")
        end
      end
      prev = part.type
    end
    if e.finish == "canceled" then
      table.insert(out, "")
      table.insert(out, "_(cancelled)_")
    elseif e.finish == "interrupted" then
      table.insert(out, "")
      table.insert(out, "_(interrupted: the daemon stopped)_")
    elseif e.error and e.finish ~= "tool_use" then
      table.insert(out, "")
      table.insert(out, "**error:** " .. tostring(e.error))
    end
    table.insert(out, "")
  elseif e.kind == "note" then
    -- Marks of a run's outcome look like an answer's ("_(cancelled)_"): one form per outcome.
    local text = tostring(e.text)
    if text == "cancelled" or text == "interrupted" then
      text = "(" .. text .. ")"
    end
    table.insert(out, "_" .. text .. "_")
    table.insert(out, "")
  elseif e.kind == "permission" then
    local p = e.prompt
    if p.state ~= "resolved" then
      prompt_lines(out, p)
    else
      table.insert(out, "_" .. tostring(p.params.title or p.params.tool) .. ": " .. tostring(p.note) .. "_")
      table.insert(out, "")
    end
  end
  return out
end

--- Writes `lines` over buffer lines [start, end) keeping every window's view, except that a
--- window whose cursor was on the last line follows the end.
local function write_lines(buf, start, stop, lines)
  local wins = vim.fn.win_findbuf(buf)
  local count = vim.api.nvim_buf_line_count(buf)
  local saved = {}
  for _, w in ipairs(wins) do
    local row = vim.api.nvim_win_get_cursor(w)[1]
    if row >= count then
      saved[w] = false
    else
      saved[w] = vim.api.nvim_win_call(w, vim.fn.winsaveview)
    end
  end
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, start, stop, false, lines)
  vim.bo[buf].modifiable = false
  local new_count = vim.api.nvim_buf_line_count(buf)
  for w, view in pairs(saved) do
    if view then
      vim.api.nvim_win_call(w, function()
        vim.fn.winrestview(view)
      end)
    else
      pcall(vim.api.nvim_win_set_cursor, w, { new_count, 0 })
    end
  end
end

--- Renders the entries of `s` that changed into its buffer.
function M.render(s)
  local buf = s.buf
  if not buf or not vim.api.nvim_buf_is_valid(buf) then
    return
  end
  local k = s.first_dirty
  if k > #s.entries then
    return
  end
  s.offsets = s.offsets or {}
  local start = 0
  if k > 1 then
    local prev = s.entries[k - 1]
    start = (s.offsets[k - 1] or 0) + #(prev.lines or {})
  end
  local new = {}
  local pos = start
  for i = k, #s.entries do
    local e = s.entries[i]
    if e.dirty or not e.lines then
      e.lines = entry_lines(s, e)
      e.dirty = false
    end
    s.offsets[i] = pos
    for _, l in ipairs(e.lines) do
      table.insert(new, l)
    end
    pos = pos + #e.lines
  end
  for i = #s.entries + 1, #s.offsets do
    s.offsets[i] = nil
  end
  s.first_dirty = #s.entries + 1
  -- Where prompts sit, for the answer keys.
  for _, p in pairs(s.prompts) do
    p.rows = nil
    local owner = p.entry
    if owner and p.rel_rows and s.offsets[owner.idx] then
      p.rows = { s.offsets[owner.idx] + p.rel_rows[1], s.offsets[owner.idx] + p.rel_rows[2] }
    end
  end
  local old = vim.api.nvim_buf_get_lines(buf, start, -1, false)
  local d = 1
  while d <= #new and d <= #old and new[d] == old[d] do
    d = d + 1
  end
  if d > #new and d > #old then
    return
  end
  local tail = {}
  for i = d, #new do
    tail[#tail + 1] = new[i]
  end
  if start == 0 and d == 1 and #old == 1 and old[1] == "" then
    write_lines(buf, 0, -1, tail)
  else
    write_lines(buf, start + d - 1, -1, tail)
  end
end

--- The id of the stored message shown at buffer row `row` (1-based) of the session's chat: the
--- message whose lines hold it, or the nearest one above (tool output belongs to its message).
function M.message_at(s, row)
  local found
  for i, e in ipairs(s.entries) do
    local off = s.offsets and s.offsets[i]
    if not off or off >= row then
      break
    end
    if e.id then
      found = e.id
    end
  end
  return found
end

function M.schedule_render(s)
  if s.render_scheduled then
    return
  end
  s.render_scheduled = true
  vim.schedule(function()
    s.render_scheduled = false
    M.render(s)
  end)
end

return M
