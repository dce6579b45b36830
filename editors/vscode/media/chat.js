// The chat webview. It renders the state the extension posts ({type: "state"}) and sends back
// user intents as messages; it never talks to the daemon. Rendering is a pure function of the
// state (`render`), exported for the tests under Node.
//
// Assistant text is Markdown: markdown-it with raw HTML off (so no HTML in the model's text ever
// reaches the page as markup, and javascript:/data: links are refused by its link check), code
// blocks highlighted by highlight.js, and in the webview the resulting HTML goes through
// DOMPurify before it is inserted. Everything else is escaped. esbuild bundles this file and
// those three packages into dist/chat.js; the page's Content-Security-Policy allows only that
// script (nonce'd), the extension's styles and the codicon font.
"use strict";

var MarkdownIt = require("markdown-it");
var hljs = require("highlight.js/lib/common");
var createDOMPurify = require("dompurify");

function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
    return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
  });
}

function pretty(v) {
  return typeof v === "string" ? v : JSON.stringify(v, null, 2);
}

var md = new MarkdownIt({
  html: false,
  linkify: true,
  breaks: false,
  highlight: function (code, lang) {
    var body;
    try {
      body = lang && hljs.getLanguage(lang) ? hljs.highlight(code, { language: lang, ignoreIllegals: true }).value : esc(code);
    } catch (e) {
      body = esc(code);
    }
    return (
      '<div class="codeblock"><div class="code-actions">' +
      (lang ? '<span class="lang">' + esc(lang) + "</span>" : "") +
      '<button class="icon" data-code-action="copy" title="Copy"><span class="codicon codicon-copy"></span></button>' +
      '<button class="icon" data-code-action="insert" title="Insert at cursor"><span class="codicon codicon-insert"></span></button>' +
      '</div><pre class="hljs"><code>' + body + "</code></pre></div>"
    );
  },
});
// Links open through VS Code (the webview cannot navigate): they carry their target as data.
md.renderer.rules.link_open = function (tokens, idx, options, env, self) {
  var t = tokens[idx];
  t.attrSet("title", t.attrGet("href") || "");
  return self.renderToken(tokens, idx, options);
};

// In the webview, a DOMPurify bound to the page's window; under Node (tests) markdown-it's own
// escaping is what protects.
var purify = typeof window !== "undefined" && window.document ? createDOMPurify(window) : null;

function markdown(text) {
  var html = md.render(String(text || ""));
  return purify ? purify.sanitize(html, { ADD_ATTR: ["data-code-action"] }) : html;
}

var STATES = {
  idle: "Idle",
  running: "Running…",
  queued: "Queued",
  waitingForPermission: "Waiting for permission",
};

function ago(ms, now) {
  var s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) {
    return "just now";
  }
  if (s < 3600) {
    return Math.floor(s / 60) + " min ago";
  }
  if (s < 86400) {
    return Math.floor(s / 3600) + " h ago";
  }
  return Math.floor(s / 86400) + " d ago";
}

function renderItem(it) {
  var undone = it.reverted ? " reverted" : "";
  if (it.kind === "note") {
    return '<div class="note summary" data-id="' + esc(it.id) + '"><span class="codicon codicon-fold"></span> ' + esc(it.text) + "</div>";
  }
  if (it.kind === "user") {
    var att = it.attachments && it.attachments.length
      ? '<div class="att"><span class="codicon codicon-file"></span> ' + esc(it.attachments.join(", ")) + "</div>"
      : "";
    return '<div class="msg user' + undone + '" data-id="' + esc(it.messageId) + '"><div class="text">' + esc(it.text) + "</div>" + att + "</div>";
  }
  if (it.kind === "assistant") {
    var r = it.reasoning ? '<details class="reasoning" data-id="reasoning-' + esc(it.messageId) + '"><summary>Thinking</summary><div>' + esc(it.reasoning) + "</div></details>" : "";
    var err = it.error ? '<div class="error"><span class="codicon codicon-error"></span> ' + esc(it.error) + "</div>" : "";
    var cancelled = it.finishReason === "canceled" ? '<div class="note">(cancelled)</div>' : "";
    return '<div class="msg assistant' + undone + '" data-id="' + esc(it.messageId) + '">' + r + '<div class="markdown">' + markdown(it.text) + "</div>" + cancelled + err + "</div>";
  }
  if (it.kind === "tool") {
    var status = it.status ? esc(it.status) : "running";
    var icon = !it.status ? "loading codicon-modifier-spin" : it.status === "completed" || it.status === "success" ? "check" : "warning";
    var body = "<div>Input:</div><pre>" + esc(pretty(it.input)) + "</pre>";
    if (it.diff) {
      body += '<div>Diff: <button class="link" data-open-diff-tool="' + esc(it.toolCallId) + '"><span class="codicon codicon-diff"></span> Open diff</button></div><pre class="diff">' + esc(it.diff) + "</pre>";
    }
    if (it.output !== undefined) {
      body += "<div>Output:</div><pre>" + esc(it.output) + "</pre>";
    }
    return (
      '<details class="tool" data-id="' + esc(it.toolCallId) + '"><summary><span class="codicon codicon-' + icon + '"></span> ' +
      esc(it.tool) + " — " + status + "</summary>" + body + "</details>"
    );
  }
  return "";
}

function renderPending(p) {
  var what = p.text !== undefined ? esc(p.text) : "<i>a prompt from another client</i>";
  var label = p.steer ? "steering — joins the running turn at its next step" : "queued";
  return (
    '<div class="msg user pending" data-run="' + esc(p.runId) + '"><div class="text">' + what + '</div><div class="note"><span class="codicon codicon-watch"></span> ' + label + "</div></div>"
  );
}

function renderPrompt(p) {
  var detail = p.diff ? '<pre class="diff">' + esc(p.diff) + "</pre>" : "<pre>" + esc(pretty(p.input)) + "</pre>";
  // "Always allow" saves a rule for the workspace (the extension asks for its pattern, filled in
  // with the suggestion); the other scopes are in the quick pick.
  var always = "";
  if (p.scopes && p.scopes.indexOf("workspace") >= 0) {
    var what = typeof p.suggestedPattern === "string" ? esc(p.tool) + ' "' + esc(p.suggestedPattern) + '"' : esc(p.tool);
    always = ' <button class="secondary" data-decision="allowAlways" data-scope="workspace" title="Save a rule (you edit its pattern next): ' + what + ' runs without asking in this workspace">Always allow here…</button>';
  }
  var diffButton = p.diff ? ' <button class="secondary" data-open-diff-request="' + esc(p.requestId) + '"><span class="codicon codicon-diff"></span> Open diff</button>' : "";
  return (
    '<div class="prompt" data-request="' + esc(p.requestId) + '"><div class="prompt-title"><span class="codicon codicon-shield"></span> <b>' + esc(p.tool) + "</b>: " + esc(p.title) + "</div>" + detail +
    '<div class="prompt-actions"><button data-decision="allow">Allow once</button> <button class="secondary" data-decision="allowSession">Allow for session</button>' + always + ' <button class="secondary" data-decision="deny">Deny</button>' +
    diffButton + "</div></div>"
  );
}

function money(cost) {
  if (cost === 0) {
    return "$0.00";
  }
  if (cost < 0.0001) {
    return "< $0.0001";
  }
  return "$" + cost.toFixed(cost < 1 ? 4 : 2);
}

function usage(s) {
  if (!s) {
    return "";
  }
  var parts = [esc(s.messageCount + " messages")];
  if (s.tokens) {
    parts.push(esc(s.tokens.toLocaleString("en-US") + " tokens"));
    // `null`: a token had no price (the model has none in the daemon's table or config), so
    // the session's cost is unknown; say so rather than show a made-up figure.
    parts.push(
      typeof s.cost === "number"
        ? '<span class="cost" title="cost of the session">' + esc(money(s.cost)) + "</span>"
        : '<span class="cost unknown" title="the model has no price: set input_price and output_price for it in the daemon\'s config">cost unknown</span>',
    );
  }
  return parts.join(" · ");
}

/** The parts of the view as HTML strings. */
function render(state, now) {
  now = now || Date.now();
  var current = state.session || (state.sessions || []).filter(function (s) { return s.sessionId === state.sessionId; })[0];
  var title = current ? esc(current.title) : state.sessionId ? "Session" : "No session";
  var sessions = state.sessions
    .map(function (s) {
      return (
        '<div class="session-row' + (s.sessionId === state.sessionId ? " current" : "") + '" role="option" tabindex="0" data-session="' + esc(s.sessionId) + '">' +
        '<span class="codicon ' + (s.busy ? "codicon-loading codicon-modifier-spin busy" : "codicon-comment") + '" title="' + (s.busy ? "busy" : "idle") + '"></span>' +
        '<span class="session-title">' + esc(s.title) + '</span><span class="when">' + esc(ago(s.updatedAt, now)) + "</span></div>"
      );
    })
    .join("");
  if (!sessions) {
    sessions = '<div class="empty">No sessions in this folder yet.</div>';
  }
  var models =
    '<option value=""' + (state.model ? "" : " selected") + ">(default model)</option>" +
    state.models
      .map(function (m) {
        return '<option value="' + esc(m.name) + '"' + (m.name === state.model ? " selected" : "") + (m.unavailable ? " disabled" : "") + ">" + esc(m.name) + "</option>";
      })
      .join("");
  var status = state.connection !== "connected"
    ? '<span class="codicon codicon-debug-disconnect"></span> daemon: ' + esc(state.connection)
    : esc(STATES[state.state] || state.state);
  if (state.error) {
    status += ' <span class="error">' + esc(state.error) + "</span>";
  }
  return {
    title: title,
    usage: usage(current),
    sessions: sessions,
    models: models,
    status: status,
    log: state.items.map(renderItem).join(""),
    pending: (state.pending || []).map(renderPending).join(""),
    prompts: state.prompts.map(renderPrompt).join(""),
  };
}

if (typeof module !== "undefined" && module.exports && typeof acquireVsCodeApi === "undefined") {
  module.exports = { render: render, esc: esc, markdown: markdown };
} else {
  main();
}

function main() {
  var vscode = acquireVsCodeApi();
  var $ = function (id) {
    return document.getElementById(id);
  };
  function post(m) {
    vscode.postMessage(m);
  }
  function submit(mode) {
    var text = $("prompt").value;
    if (text.trim() === "") {
      return;
    }
    post({ type: "send", text: text, mode: mode });
    $("prompt").value = "";
  }
  $("form").addEventListener("submit", function (e) {
    e.preventDefault();
    submit("queue");
  });
  $("prompt").addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      submit("queue");
    }
  });
  $("steer").addEventListener("click", function () {
    submit("steer");
  });
  $("cancel").addEventListener("click", function () {
    post({ type: "cancel" });
  });
  $("new").addEventListener("click", function () {
    post({ type: "newSession" });
  });
  $("sessionsToggle").addEventListener("click", function () {
    var list = $("sessionList");
    list.hidden = !list.hidden;
    $("sessionsToggle").setAttribute("aria-expanded", String(!list.hidden));
    if (!list.hidden) {
      post({ type: "refreshSessions" });
    }
  });
  $("sessionList").addEventListener("click", function (e) {
    var row = e.target.closest && e.target.closest("[data-session]");
    if (row) {
      $("sessionList").hidden = true;
      post({ type: "selectSession", sessionId: row.getAttribute("data-session") });
    }
  });
  $("model").addEventListener("change", function (e) {
    post({ type: "setModel", model: e.target.value });
  });
  document.body.addEventListener("click", function (e) {
    var t = e.target.closest ? e.target.closest("button, a") : null;
    if (!t) {
      return;
    }
    if (t.tagName === "A") {
      // Links open through VS Code (the extension validates the scheme).
      e.preventDefault();
      post({ type: "openLink", href: t.getAttribute("href") });
      return;
    }
    var d = t.getAttribute("data-decision");
    var box = t.closest("[data-request]");
    if (d && box) {
      var msg = { type: "permission", requestId: box.getAttribute("data-request"), decision: d };
      if (t.hasAttribute("data-scope")) {
        msg.scope = t.getAttribute("data-scope");
      }
      post(msg);
      return;
    }
    if (t.hasAttribute("data-open-diff-request")) {
      post({ type: "openDiff", requestId: t.getAttribute("data-open-diff-request") });
      return;
    }
    if (t.hasAttribute("data-open-diff-tool")) {
      e.preventDefault();
      post({ type: "openDiff", toolCallId: t.getAttribute("data-open-diff-tool") });
      return;
    }
    var action = t.getAttribute("data-code-action");
    if (action) {
      var code = t.closest(".codeblock").querySelector("code").textContent;
      post({ type: action === "copy" ? "copyCode" : "insertCode", code: code });
    }
  });
  // What each part of the page was last set to: a part is replaced only when its HTML changed, so
  // a state update that touches one part (usage after a run, the status line) does not rebuild
  // the conversation under the user's pointer, selection or focus, nor scroll it.
  var shown = {};
  function put(id, html) {
    if (shown[id] === html) {
      return false;
    }
    shown[id] = html;
    $(id).innerHTML = html;
    return true;
  }
  window.addEventListener("message", function (e) {
    var m = e.data;
    if (!m || m.type !== "state") {
      return;
    }
    var h = render(m.state);
    var log = $("log");
    var atBottom = document.scrollingElement.scrollHeight - document.scrollingElement.scrollTop - window.innerHeight < 40;
    put("sessionTitle", h.title);
    put("usage", h.usage);
    put("sessionList", h.sessions);
    if (!put("model", h.models)) {
      // A choice the daemon did not take (setModel failed) goes back to the session's model.
      $("model").value = m.state.model || "";
    }
    put("status", h.status);
    $("status").setAttribute("data-state", m.state.connection !== "connected" ? m.state.connection : m.state.state);
    // Keep the tool calls the user expanded expanded across re-renders.
    var open = {};
    log.querySelectorAll("details[open]").forEach(function (d) {
      open[d.getAttribute("data-id") || ""] = true;
    });
    var grew = put("log", h.log);
    if (grew) {
      log.querySelectorAll("details").forEach(function (d) {
        if (open[d.getAttribute("data-id") || ""]) {
          d.open = true;
        }
      });
    }
    grew = put("pending", h.pending) || grew;
    grew = put("prompts", h.prompts) || grew;
    if (grew && atBottom) {
      window.scrollTo(0, document.body.scrollHeight);
    }
  });
  post({ type: "ready" });
}
