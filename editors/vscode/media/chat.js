// The chat webview. It renders the state the extension posts ({type: "state"}) and sends back
// user intents as messages; it never talks to the daemon. Rendering is a pure function of the
// state (`render`), exported for the tests under Node, and every string is escaped.
(function () {
  "use strict";

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function pretty(v) {
    return typeof v === "string" ? v : JSON.stringify(v, null, 2);
  }

  var STATES = {
    idle: "idle",
    running: "running…",
    queued: "queued",
    waitingForPermission: "waiting for permission",
  };

  function renderItem(it) {
    if (it.kind === "user") {
      var att = it.attachments && it.attachments.length ? '<div class="att">📎 ' + esc(it.attachments.join(", ")) + "</div>" : "";
      return '<div class="msg user" data-id="' + esc(it.messageId) + '">' + esc(it.text) + att + "</div>";
    }
    if (it.kind === "assistant") {
      var r = it.reasoning ? '<div class="reasoning">' + esc(it.reasoning) + "</div>" : "";
      var err = it.error ? '<div class="error">' + esc(it.error) + "</div>" : "";
      var cancelled = it.finishReason === "canceled" ? ' <span class="note">(cancelled)</span>' : "";
      return '<div class="msg assistant" data-id="' + esc(it.messageId) + '">' + r + esc(it.text) + cancelled + err + "</div>";
    }
    if (it.kind === "tool") {
      var status = it.status ? esc(it.status) : "running";
      var body = "<div>Input:</div><pre>" + esc(pretty(it.input)) + "</pre>";
      if (it.diff) {
        body += "<div>Diff:</div><pre>" + esc(it.diff) + "</pre>";
      }
      if (it.output !== undefined) {
        body += "<div>Output:</div><pre>" + esc(it.output) + "</pre>";
      }
      return '<details class="tool" data-id="' + esc(it.toolCallId) + '"><summary>🔧 ' + esc(it.tool) + " — " + status + "</summary>" + body + "</details>";
    }
    return "";
  }

  function renderPrompt(p) {
    var detail = p.diff ? "<pre>" + esc(p.diff) + "</pre>" : "<pre>" + esc(pretty(p.input)) + "</pre>";
    return (
      '<div class="prompt" data-request="' + esc(p.requestId) + '"><div><b>' + esc(p.tool) + "</b>: " + esc(p.title) + "</div>" + detail +
      '<button data-decision="allow">Allow once</button> <button data-decision="allowSession">Allow for session</button> <button data-decision="deny">Deny</button></div>'
    );
  }

  /** The parts of the view as HTML strings. */
  function render(state) {
    var sessions = state.sessions
      .map(function (s) {
        return '<option value="' + esc(s.sessionId) + '"' + (s.sessionId === state.sessionId ? " selected" : "") + ">" + esc(s.title) + "</option>";
      })
      .join("");
    if (!state.sessionId) {
      sessions = '<option value="" selected>(no session)</option>' + sessions;
    }
    var models =
      '<option value=""' + (state.model ? "" : " selected") + ">(default model)</option>" +
      state.models
        .map(function (m) {
          return '<option value="' + esc(m.name) + '"' + (m.name === state.model ? " selected" : "") + (m.unavailable ? " disabled" : "") + ">" + esc(m.name) + "</option>";
        })
        .join("");
    var status = state.connection !== "connected" ? "daemon: " + esc(state.connection) : esc(STATES[state.state] || state.state);
    if (state.error) {
      status += ' <span class="error">' + esc(state.error) + "</span>";
    }
    return {
      sessions: sessions,
      models: models,
      status: status,
      log: state.items.map(renderItem).join(""),
      prompts: state.prompts.map(renderPrompt).join(""),
    };
  }

  if (typeof module !== "undefined" && module.exports) {
    module.exports = { render: render, esc: esc };
    return;
  }

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
  $("sessions").addEventListener("change", function (e) {
    if (e.target.value) {
      post({ type: "selectSession", sessionId: e.target.value });
    }
  });
  $("model").addEventListener("change", function (e) {
    post({ type: "setModel", model: e.target.value });
  });
  $("prompts").addEventListener("click", function (e) {
    var d = e.target.getAttribute && e.target.getAttribute("data-decision");
    var box = e.target.closest && e.target.closest("[data-request]");
    if (d && box) {
      post({ type: "permission", requestId: box.getAttribute("data-request"), decision: d });
    }
  });
  window.addEventListener("message", function (e) {
    var m = e.data;
    if (!m || m.type !== "state") {
      return;
    }
    var h = render(m.state);
    var log = $("log");
    var atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    $("sessions").innerHTML = h.sessions;
    $("model").innerHTML = h.models;
    $("status").innerHTML = h.status;
    // Keep the tool calls the user expanded expanded across re-renders.
    var open = {};
    log.querySelectorAll("details[open]").forEach(function (d) {
      open[d.getAttribute("data-id")] = true;
    });
    log.innerHTML = h.log;
    log.querySelectorAll("details").forEach(function (d) {
      if (open[d.getAttribute("data-id")]) {
        d.open = true;
      }
    });
    $("prompts").innerHTML = h.prompts;
    if (atBottom) {
      window.scrollTo(0, document.body.scrollHeight);
    }
  });
  post({ type: "ready" });
})();
