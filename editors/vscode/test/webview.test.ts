// The webview's rendering (media/chat.js, a pure function of the posted state) and the
// extension side of the webview's messages (Controller.handleMessage) for malformed input.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as path from "node:path";

// eslint-disable-next-line @typescript-eslint/no-var-requires
const chat = require(path.join(__dirname, "..", "..", "media", "chat.js")) as {
  render: (s: unknown) => Record<string, string>;
};

const base = {
  connection: "connected",
  sessions: [{ sessionId: "s1", title: "<b>Title</b>", busy: false }],
  sessionId: "s1",
  model: "mock/mock-1",
  models: [{ name: "mock/mock-1" }, { name: "openai/gpt-5", unavailable: "no key" }],
  state: "running",
  items: [] as unknown[],
  prompts: [] as unknown[],
};

test("the webview escapes everything it renders", () => {
  const h = chat.render({
    ...base,
    items: [
      { kind: "user", messageId: "m1", text: "<script>alert(1)</script>", attachments: ["a<b>.ts:1-2"] },
      { kind: "assistant", messageId: "m2", text: "x & y <img src=x onerror=alert(1)>", reasoning: "" },
    ],
  });
  assert.ok(!h.log.includes("<script>"));
  assert.ok(!h.log.includes("<img"));
  assert.match(h.log, /&lt;script&gt;alert\(1\)&lt;\/script&gt;/);
  assert.match(h.log, /x &amp; y/);
  assert.match(h.sessions, /&lt;b&gt;Title&lt;\/b&gt;/);
  assert.match(h.status, /running/);
});

test("tool calls render collapsed with their input, diff and output", () => {
  const h = chat.render({
    ...base,
    items: [{ kind: "tool", toolCallId: "c1", tool: "write", input: { path: "a.txt" }, status: "completed", output: "Wrote a.txt", diff: "+hi" }],
  });
  assert.match(h.log, /<details class="tool" data-id="c1"><summary>🔧 write — completed<\/summary>/);
  assert.ok(!h.log.includes("<details open"));
  assert.match(h.log, /Wrote a\.txt/);
  assert.match(h.log, /\+hi/);
});

test("permission prompts offer allow once, allow for the session and deny", () => {
  const h = chat.render({
    ...base,
    state: "waitingForPermission",
    prompts: [{ requestId: "r1", sessionId: "s1", runId: "u", toolCallId: "c", tool: "bash", title: "Run: ls", input: { command: "ls" } }],
  });
  assert.match(h.prompts, /data-request="r1"/);
  for (const d of ["allow", "allowSession", "deny"]) {
    assert.match(h.prompts, new RegExp(`data-decision="${d}"`));
  }
  assert.match(h.status, /waiting for permission/);
});

test("the model picker lists models, marks the session's and disables unavailable ones", () => {
  const h = chat.render(base);
  assert.match(h.models, /<option value="mock\/mock-1" selected>/);
  assert.match(h.models, /<option value="openai\/gpt-5" disabled>/);
  const d = chat.render({ ...base, connection: "disconnected" });
  assert.match(d.status, /daemon: disconnected/);
});
