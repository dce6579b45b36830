--- Small helpers shared by the modules: ids, notifications, version checks.
local M = {}

M.MIN_NVIM = "0.10"

--- Whether this Neovim can run the plugin (vim.lsp.rpc.connect to a socket path needs 0.10).
function M.nvim_ok()
  return vim.fn.has("nvim-0.10") == 1
end

function M.version_error()
  local v = vim.version and vim.version() or { major = 0, minor = 0, patch = 0 }
  return string.format(
    "crush.nvim needs Neovim %s or newer (it connects with vim.lsp.rpc.connect to a socket path); this is %d.%d.%d",
    M.MIN_NVIM,
    v.major,
    v.minor,
    v.patch
  )
end

--- The short form of an id, as crushctl shows it: its last 8 characters (a UUIDv7 starts with a
--- timestamp shared by ids made in the same minute; only its end is random).
function M.short_id(id)
  id = tostring(id or "")
  return #id > 8 and id:sub(-8) or id
end

--- Whether `fragment` names `id` as crushctl accepts it: a prefix or a suffix (any case).
function M.id_matches(id, fragment)
  id, fragment = tostring(id):lower(), tostring(fragment):lower()
  return vim.startswith(id, fragment) or vim.endswith(id, fragment)
end

--- A wait as crushctl writes it: "2 s", "1.5 s", "250 ms".
function M.human_ms(ms)
  ms = tonumber(ms) or 0
  if ms < 1000 then
    return string.format("%d ms", ms)
  elseif ms % 1000 == 0 then
    return string.format("%d s", ms / 1000)
  end
  return string.format("%.1f s", ms / 1000)
end

local seeded = false
local function seed()
  if not seeded then
    math.randomseed(vim.uv.hrtime() % 2147483647 + vim.uv.os_getpid())
    seeded = true
  end
end

local function rand_hex(n)
  seed()
  local t = {}
  for i = 1, n do
    t[i] = string.format("%x", math.random(0, 15))
  end
  return table.concat(t)
end

--- A UUID version 7 (time-ordered), as the protocol recommends for run ids and client ids.
function M.uuid7()
  seed()
  local sec, usec = vim.uv.gettimeofday()
  local ms = sec * 1000 + math.floor(usec / 1000)
  local hex = string.format("%012x", ms)
  local variant = ({ "8", "9", "a", "b" })[math.random(1, 4)]
  return string.format(
    "%s-%s-7%s-%s%s-%s",
    hex:sub(1, 8),
    hex:sub(9, 12),
    rand_hex(3),
    variant,
    rand_hex(3),
    rand_hex(12)
  )
end

-- Notifications scheduled and not shown yet: the same one made twice in one go (a failed
-- connection, reported by the connection and by the command that waited for it) is shown once.
local queued = {}

function M.notify(msg, level)
  msg, level = tostring(msg), level or vim.log.levels.INFO
  local key = level .. "\0" .. msg
  if queued[key] then
    return
  end
  queued[key] = true
  vim.schedule(function()
    queued[key] = nil
    vim.notify("crush: " .. msg, level)
  end)
end

function M.warn(msg)
  M.notify(msg, vim.log.levels.WARN)
end

function M.error(msg)
  M.notify(msg, vim.log.levels.ERROR)
end

--- "3m ago" for a Unix-ms timestamp.
function M.ago(ms)
  if type(ms) ~= "number" then
    return "?"
  end
  local s = math.max(0, os.time() - math.floor(ms / 1000))
  if s < 60 then
    return s .. "s ago"
  elseif s < 3600 then
    return math.floor(s / 60) .. "m ago"
  elseif s < 86400 then
    return math.floor(s / 3600) .. "h ago"
  end
  return math.floor(s / 86400) .. "d ago"
end

--- Splits text into lines (a trailing newline gives a trailing empty line).
function M.lines(text)
  return vim.split(text or "", "\n", { plain = true })
end

return M
