-- Headless test runner for crush.nvim. Run by tests/tests/editor_nvim.rs (cargo test), as:
--   CRUSH_TEST_SPEC=<name> nvim --headless --clean --cmd 'set rtp^=<editors/nvim>' -c 'luafile <this file>'
-- against a real crushd and the loopback mock model. It runs tests/spec/<name>_spec.lua, prints
-- one line per test, then `N passed, N failed`, and exits non-zero when a test failed.
-- Lines starting with "SIGNAL " tell the Rust side that a point was reached.
local root = vim.fn.fnamemodify(debug.getinfo(1, "S").source:sub(2), ":p:h:h")

local T = { root = root, tests = {} }
_G.T = T

local function out(line)
  io.stdout:write(line .. "\n")
  io.stdout:flush()
end
T.out = out

function T.it(name, fn)
  table.insert(T.tests, { name = name, fn = fn })
end

function T.signal(name)
  out("SIGNAL " .. name)
end

--- Waits (processing events) until pred() is truthy; fails after timeout ms.
--- `show` (optional) says what to print with the failure.
function T.wait(what, pred, timeout, show)
  local ok = vim.wait(timeout or 10000, function()
    local good, v = pcall(pred)
    return good and v
  end, 10)
  if not ok then
    error("timed out waiting until " .. what .. (show and (":\n" .. tostring(show())) or ""), 2)
  end
end

function T.eq(want, got, what)
  if not vim.deep_equal(want, got) then
    error(string.format("%s: expected %s, got %s", what or "value", vim.inspect(want), vim.inspect(got)), 2)
  end
end

function T.ok(cond, what)
  if not cond then
    error("expected: " .. tostring(what), 2)
  end
end

function T.lines(buf)
  return vim.api.nvim_buf_get_lines(buf, 0, -1, false)
end

function T.text(buf)
  return table.concat(T.lines(buf), "\n")
end

function T.contains(buf, needle)
  return T.text(buf):find(needle, 1, true) ~= nil
end

function T.count(buf, needle)
  local n, i = 0, 1
  local text = T.text(buf)
  while true do
    local s, e = text:find(needle, i, true)
    if not s then
      return n
    end
    n, i = n + 1, e + 1
  end
end

--- Records `User <pattern>` autocommands' data.
function T.record(pattern)
  local got = {}
  vim.api.nvim_create_autocmd("User", {
    pattern = pattern,
    callback = function(ev)
      table.insert(got, ev.data)
    end,
  })
  return got
end

--- Records the params of every request the plugin sends with `method`.
function T.spy(method)
  local client = require("crush.client")
  local got = {}
  local orig = client.request
  client.request = function(m, params, cb)
    if m == method then
      table.insert(got, vim.deepcopy(params))
    end
    return orig(m, params, cb)
  end
  return got
end

--- A second, independent connection (another client) for tests: returns an object with
--- request_sync(method, params) and a list of notifications received.
function T.helper_client(name)
  local path = require("crush.client").socket_path()
  local h = { notes = {} }
  h.rpc = vim.lsp.rpc.connect(path)({
    notification = function(method, params)
      table.insert(h.notes, { method = method, params = params })
    end,
  })
  function h.request_sync(method, params)
    local done, err, res = false, nil, nil
    h.rpc.request(method, params or vim.empty_dict(), function(e, r)
      done, err, res = true, e, r
    end)
    T.wait(method .. " answered", function()
      return done
    end)
    if err then
      error(method .. " failed: " .. vim.inspect(err), 2)
    end
    return res
  end
  h.request_sync("initialize", { clientInfo = { name = name or "helper" }, protocolVersion = 1 })
  h.rpc.notify("initialized", vim.empty_dict())
  function h.close()
    h.rpc.terminate()
  end
  return h
end

local spec = vim.env.CRUSH_TEST_SPEC
local ok, err = pcall(dofile, root .. "/tests/spec/" .. tostring(spec) .. "_spec.lua")
local passed, failed = 0, 0
if not ok then
  out("not ok - loading spec " .. tostring(spec) .. ": " .. tostring(err))
  failed = 1
else
  for i, t in ipairs(T.tests) do
    local good, e = xpcall(t.fn, debug.traceback)
    if good then
      passed = passed + 1
      out(string.format("ok %d - %s", i, t.name))
    else
      failed = failed + 1
      out(string.format("not ok %d - %s: %s", i, t.name, tostring(e)))
    end
  end
end
out(string.format("%d passed, %d failed", passed, failed))
if failed > 0 then
  vim.cmd("cquit 1")
else
  vim.cmd("qall!")
end
