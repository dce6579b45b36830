-- crush.nvim: the :Crush command and <Plug> mappings. Nothing is mapped for you; nothing
-- connects until a command is used. Configuration is optional: require("crush").setup({...}).
if vim.g.loaded_crush then
  return
end
vim.g.loaded_crush = true

if vim.fn.has("nvim-0.10") ~= 1 then
  vim.api.nvim_create_user_command("Crush", function()
    vim.notify(
      "crush.nvim needs Neovim 0.10 or newer (it connects with vim.lsp.rpc.connect to a socket path)",
      vim.log.levels.ERROR
    )
  end, { nargs = "*" })
  return
end

local subcommands = {
  open = function(_, _)
    require("crush").open()
  end,
  send = function(args, opts)
    local crush = require("crush")
    local text = table.concat(args, " ")
    local function show(err, _, s)
      if not err and s then
        crush.show(s)
      end
    end
    if vim.trim(text) == "" then
      if opts.range > 0 then
        return crush.prompt(nil, opts.line1, opts.line2)
      end
      return crush.prompt()
    end
    if opts.range > 0 then
      return crush.send_range(text, opts.line1, opts.line2, show)
    end
    crush.send(text, {}, show)
  end,
  steer = function(args)
    local crush = require("crush")
    local text = table.concat(args, " ")
    if vim.trim(text) == "" then
      return vim.notify("crush: usage: :Crush steer {text}", vim.log.levels.ERROR)
    end
    crush.steer(text, function(err, _, s)
      if not err and s then
        crush.show(s)
      end
    end)
  end,
  cancel = function()
    require("crush").cancel()
  end,
  new = function(args)
    require("crush").new(table.concat(args, " "))
  end,
  compact = function()
    require("crush").compact()
  end,
  fork = function()
    require("crush").fork()
  end,
  undo = function(_, opts)
    require("crush").undo(nil, opts.bang)
  end,
  redo = function(_, opts)
    require("crush").redo(nil, opts.bang)
  end,
  diff = function()
    require("crush").diff()
  end,
  sessions = function()
    require("crush").sessions()
  end,
  attach = function(args)
    require("crush").attach(args[1])
  end,
  rename = function(args)
    require("crush").rename(table.concat(args, " "))
  end,
  model = function(args)
    require("crush").model(args[1])
  end,
  permission = function()
    require("crush").permission()
  end,
  permissions = function()
    require("crush").permissions()
  end,
}

local names = vim.tbl_keys(subcommands)
table.sort(names)

--- Completion of :Crush: subcommands, then model names or session ids (from the last answers
--- of the daemon, refreshed when connected).
local function complete(arglead, cmdline, _)
  local words = vim.split(cmdline:gsub("^%s*%S*Crush!?%s*", ""), "%s+", { trimempty = true })
  local typing_first = #words == 0 or (#words == 1 and not cmdline:match("%s$"))
  local function filter(list)
    return vim.tbl_filter(function(x)
      return vim.startswith(x, arglead)
    end, list)
  end
  if typing_first then
    return filter(names)
  end
  local crush = require("crush")
  local ready = require("crush.client").is_ready()
  if words[1] == "model" then
    if ready then
      local done = false
      crush.list_models(function()
        done = true
      end)
      vim.wait(1000, function()
        return done
      end, 10)
    end
    return filter(crush._model_cache or {})
  elseif words[1] == "attach" then
    if ready then
      local done = false
      crush.list_sessions(function()
        done = true
      end)
      vim.wait(1000, function()
        return done
      end, 10)
    end
    return filter(vim.tbl_map(function(s)
      return s.sessionId
    end, crush._session_cache or {}))
  end
  return {}
end

vim.api.nvim_create_user_command("Crush", function(opts)
  local args = vim.deepcopy(opts.fargs)
  local sub = table.remove(args, 1) or "open"
  local f = subcommands[sub]
  if not f then
    return vim.notify(
      string.format("crush: unknown subcommand %q (one of: %s)", sub, table.concat(names, ", ")),
      vim.log.levels.ERROR
    )
  end
  f(args, opts)
end, {
  nargs = "*",
  range = true,
  bang = true,
  complete = complete,
  desc = "crush: chat with the agent (:help crush)",
})

local function plug(mode, name, rhs, desc)
  vim.keymap.set(mode, "<Plug>(" .. name .. ")", rhs, { desc = desc, silent = true })
end

plug("n", "crush-open", function()
  require("crush").open()
end, "crush: open the chat")
plug("n", "crush-prompt", function()
  require("crush").prompt()
end, "crush: send a prompt")
plug("x", "crush-send-selection", function()
  local l1, l2 = vim.fn.line("v"), vim.fn.line(".")
  if l1 > l2 then
    l1, l2 = l2, l1
  end
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("<Esc>", true, false, true), "nx", false)
  require("crush").prompt(nil, l1, l2)
end, "crush: send the selection with a prompt")
plug("n", "crush-cancel", function()
  require("crush").cancel()
end, "crush: cancel the session's work")
plug("n", "crush-new", function()
  require("crush").new()
end, "crush: new session")
plug("n", "crush-sessions", function()
  require("crush").sessions()
end, "crush: pick a session")
plug("n", "crush-permission", function()
  require("crush").permission()
end, "crush: answer a permission prompt")

vim.api.nvim_create_autocmd("VimLeavePre", {
  group = vim.api.nvim_create_augroup("crush", { clear = true }),
  callback = function()
    if package.loaded["crush.client"] then
      require("crush.client").stop()
    end
  end,
})
