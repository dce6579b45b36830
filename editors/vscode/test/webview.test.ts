// The webview's rendering (media/chat.js, a pure function of the posted state) and the
// extension side of the webview's messages (Controller.handleMessage) for malformed input.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as path from "node:path";

// eslint-disable-next-line @typescript-eslint/no-var-requires
const chat = require(path.join(__dirname, "..", "..", "media", "chat.js")) as {
  render: (s: unknown, now?: number) => Record<string, string>;
  markdown: (text: string) => string;
};

const base = {
  connection: "connected",
  sessions: [
    { sessionId: "s1", title: "<b>Title</b>", busy: false, updatedAt: 1_000_000, messageCount: 2, tokens: 26, cost: 0 },
    { sessionId: "s2", title: "Other", busy: true, updatedAt: 1_000_000 - 3 * 3_600_000, messageCount: 0, tokens: 0, cost: 0 },
  ],
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
  assert.match(h.title, /&lt;b&gt;Title&lt;\/b&gt;/);
  assert.match(h.status, /Running/);
});

test("tool calls render collapsed with their input, diff and output", () => {
  const h = chat.render({
    ...base,
    items: [{ kind: "tool", toolCallId: "c1", tool: "write", input: { path: "a.txt" }, status: "completed", output: "Wrote a.txt", diff: "+hi" }],
  });
  assert.match(h.log, /<details class="tool" data-id="c1"><summary><span class="codicon codicon-check"><\/span> write — completed<\/summary>/);
  assert.match(h.log, /data-open-diff-tool="c1"/, "a finished edit offers Open diff");
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
  assert.match(h.status, /Waiting for permission/);
  assert.ok(!h.prompts.includes("allowAlways"), "no rule offered without scopes");
  const r = chat.render({
    ...base,
    state: "waitingForPermission",
    prompts: [{ requestId: "r2", sessionId: "s1", runId: "u", toolCallId: "c", tool: "bash", title: "Run: ls <x>", input: { command: "ls" },
      scopes: ["session", "workspace", "global"], suggestedPattern: "ls <x>" }],
  });
  assert.match(r.prompts, /data-decision="allowAlways" data-scope="workspace"/);
  assert.match(r.prompts, /bash "ls &lt;x&gt;" runs without asking in this workspace/, "the pattern is escaped");
});

test("the model picker lists models, marks the session's and disables unavailable ones", () => {
  const h = chat.render(base);
  assert.match(h.models, /<option value="mock\/mock-1" selected>/);
  assert.match(h.models, /<option value="openai\/gpt-5" disabled>/);
  const d = chat.render({ ...base, connection: "disconnected" });
  assert.match(d.status, /daemon: disconnected/);
});

test("assistant text is Markdown: lists, links, highlighted code blocks with copy and insert", () => {
  const h = chat.render({
    ...base,
    items: [
      {
        kind: "assistant",
        messageId: "m1",
        reasoning: "",
        text: "Two steps:\n\n1. **build**\n2. see [docs](https://example.com/d)\n\n```rust\nfn main() { let x = \"<b>\"; }\n```\n",
      },
    ],
  });
  assert.match(h.log, /<ol>\s*<li><strong>build<\/strong><\/li>/);
  assert.match(h.log, /<a href="https:\/\/example\.com\/d"[^>]*>docs<\/a>/);
  assert.match(h.log, /<span class="hljs-keyword">fn<\/span>/, "code is highlighted");
  assert.match(h.log, /&quot;&lt;b&gt;&quot;|&lt;b&gt;/, "code is escaped");
  assert.match(h.log, /data-code-action="copy"/);
  assert.match(h.log, /data-code-action="insert"/);
});

test("Markdown never lets HTML or script links through", () => {
  const out = chat.markdown('<img src=x onerror=alert(1)> <script>x</script> [a](javascript:alert(1)) [b](data:text/html,x)');
  assert.ok(!/<img|<script/i.test(out), out);
  assert.ok(!/href="(javascript|data):/i.test(out), out);
});

test("the session list shows titles, last activity and a busy mark", () => {
  const h = chat.render(base, 1_000_000 + 30_000);
  assert.match(h.sessions, /data-session="s1"[^>]*>.*&lt;b&gt;Title.*just now/);
  assert.match(h.sessions, /data-session="s2"[^>]*><span class="codicon codicon-loading codicon-modifier-spin busy" title="busy">.*Other.*3 h ago/);
  assert.match(h.usage, /2 messages · 26 tokens · <span class="cost"[^>]*>\$0\.00</);
});

test("usage shows the session's tokens and cost, and says when the cost is unknown", () => {
  const at = (cost: number | null, tokens = 1234) => chat.render({ ...base, session: { ...base.sessions[0], tokens, cost } }).usage;
  assert.match(at(0.0022), /1,234 tokens · <span class="cost"[^>]*>\$0\.0022</);
  assert.match(at(12.5), />\$12\.50</);
  assert.match(at(0.00004), />&lt; \$0\.0001</);
  assert.match(at(null), /cost unknown/);
  assert.doesNotMatch(at(null), /\$/);
  assert.equal(at(0, 0), "2 messages", "no tokens yet: no cost either");
});

test("a steered prompt shows before it is folded into the turn", () => {
  const h = chat.render({ ...base, pending: [{ runId: "r2", steer: true, text: "also <x>", attachments: [] }] });
  assert.match(h.pending, /data-run="r2".*also &lt;x&gt;.*steering/);
});

test("a write/edit prompt offers Open diff", () => {
  const h = chat.render({
    ...base,
    prompts: [{ requestId: "r1", sessionId: "s1", runId: "u", toolCallId: "c", tool: "write", title: "Write a.txt", input: {}, diff: "--- /dev/null\n+++ b/a.txt\n@@ -0,0 +1 @@\n+hi\n" }],
  });
  assert.match(h.prompts, /data-open-diff-request="r1"/);
});
