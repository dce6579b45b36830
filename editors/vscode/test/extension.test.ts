// The extension's activation, commands, chat view and permission prompts, against a stub
// `vscode` module (the real VS Code test harness downloads VS Code, which this machine cannot)
// and a real crushd with the loopback model mock.
import { after, before, describe, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import * as stubModule from "./support/vscodeStub";
import { Daemon, deadPort, TestEnv, waitFor, waitUntil } from "./support/daemon";
import { MockLlm } from "./support/mockLlm";

stubModule.install();
const { recorded, stub, config, user, fakeView } = stubModule;
// Loaded after the stub is installed: it requires "vscode".
// eslint-disable-next-line @typescript-eslint/no-var-requires
const ext = require("../src/extension") as typeof import("../src/extension");

const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"));

function waitPosted(view: ReturnType<typeof fakeView>, pred: (state: any) => boolean, what: string) {
  return waitFor<any>(view.emitter, "posted", (m) => m.type === "state" && pred(m.state), what).then((m) => m.state);
}

describe("extension against a stub vscode", () => {
  let mock: MockLlm;
  let env: TestEnv;
  let daemon: Daemon;
  let api: import("../src/extension").Api;
  const subscriptions: Array<{ dispose(): unknown }> = [];

  before(async () => {
    mock = await MockLlm.start();
    env = new TestEnv(mock.baseUrl);
    daemon = await env.spawnDaemon();
    config["crush.socketPath"] = env.socket;
    config["crush.crushctlPath"] = env.crushctl();
    stub.workspace.workspaceFolders = [{ uri: stub.Uri.file(env.workspace), name: "ws", index: 0 }];
    api = ext.activate({
      subscriptions,
      workspaceState: {
        get: (k: string) => stubModule.memento.get(k),
        update: async (k: string, v: unknown) => void stubModule.memento.set(k, v),
      },
      extensionUri: stub.Uri.file(path.join(__dirname, "..", "..")),
      extension: { packageJSON: pkg },
    } as any);
    await waitFor(api.client, "state", (s) => s === "connected", "the connection");
  });
  after(async () => {
    await ext.deactivate();
    subscriptions.forEach((d) => d.dispose());
    await daemon.stop();
    await mock.close();
    env.cleanup();
  });

  test("activation registers every contributed command, the chat view and the status bar", () => {
    for (const c of pkg.contributes.commands) {
      assert.ok(recorded.commands.has(c.command), `command ${c.command} registered`);
    }
    assert.ok(recorded.views.has(ext.VIEW_ID));
    assert.equal(pkg.contributes.views.crush[0].id, ext.VIEW_ID);
    assert.match(api.controller.statusText(), /Crush: (idle|connecting)/);
  });

  test("the chat view has a strict CSP and drives a run by messages only", async () => {
    const v = fakeView();
    recorded.views.get(ext.VIEW_ID).resolveWebviewView(v.view);
    const html = v.view.webview.html;
    assert.match(html, /Content-Security-Policy" content="default-src 'none'; style-src vscode-resource:; font-src vscode-resource:; img-src vscode-resource:; script-src 'nonce-[^']+'"/);
    assert.ok(!/onclick=|<script>(?!<)/.test(html), "no inline script or handlers");
    v.send({ type: "ready" });
    await waitPosted(v, (s) => s.connection === "connected", "the first state");
    v.send({ type: "newSession" });
    await waitPosted(v, (s) => !!s.sessionId && s.sessions.some((x: any) => x.sessionId === s.sessionId), "the new session");
    v.send({ type: "send", text: "hi", mode: "queue" });
    const s = await waitPosted(
      v,
      (st) => st.state === "idle" && st.items.some((i: any) => i.kind === "assistant" && i.text === "Hello from the mock."),
      "the streamed reply",
    );
    assert.equal(s.items[0].text, "hi");
    assert.equal(api.controller.statusText(), "$(comment-discussion) Crush: idle");
    // Junk from the webview is ignored.
    await api.controller.handleMessage({ type: "nope" } as any);
    await api.controller.handleMessage(null as any);
    await api.controller.handleMessage({ type: "send", text: 42 } as any);
  });

  test("a permission prompt shows in the view, is answered from it, and the edit happens", async () => {
    const v = fakeView();
    recorded.views.get(ext.VIEW_ID).resolveWebviewView(v.view);
    const prompted = waitPosted(v, (s) => s.prompts.length === 1 && s.state === "waitingForPermission", "the prompt");
    const runId = await api.controller.send("#write the file");
    const s = await prompted;
    assert.equal(api.controller.statusText(), "$(question) Crush: waiting for permission");
    const p = s.prompts[0];
    assert.equal(p.tool, "write");
    assert.match(p.diff, /\+hello crush/);
    const done = waitFor<any>(api.client, "runComplete", (r) => r.runId === runId, "the run's end");
    v.send({ type: "permission", requestId: p.requestId, decision: "allow" });
    await waitPosted(v, (st) => st.prompts.length === 0, "the prompt taken down");
    await done;
    assert.equal(fs.readFileSync(path.join(env.workspace, "hello.txt"), "utf8"), "hello crush\n");
  });

  test("with the view hidden the prompt is a quick pick that shows the ask and is withdrawn when another client answers (bug 2)", async () => {
    const v = fakeView();
    recorded.views.get(ext.VIEW_ID).resolveWebviewView(v.view);
    v.view.visible = false;
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { CrushClient } = require("../src/client") as typeof import("../src/client");
    const other = new CrushClient({ socketPath: env.socket, clientId: "other-editor", clientName: "nvim" });
    await other.start();
    const sessionId = api.controller.model!.sessionId;
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { SessionModel } = require("../src/sessionModel") as typeof import("../src/sessionModel");
    await other.follow(sessionId, new SessionModel(sessionId, other));
    const shown = waitFor<stubModule.StubQuickPick>(stubModule.events, "quickPick", (q) => /Crush wants to/.test(q.title), "the quick pick");
    // The other editor answers once VS Code shows its prompt, so ours is the copy withdrawn.
    other.setPermissionHandler(async () => {
      await shown;
      return "deny";
    });
    const resolved = waitFor<any>(api.client, "permissionResolved", () => true, "$/permissionResolved");
    const runId = await api.controller.send("#write again");
    const done = waitFor<any>(api.client, "runComplete", (r) => r.runId === runId, "the run's end");
    const pick = await shown;
    assert.equal(recorded.warnings.filter((w) => /Crush wants to/.test(w)).length, 0, "no undismissable notification");
    assert.ok(pick.items.some((i) => /Allow once/.test(i.label) && /hello\.txt/.test(i.detail ?? "")), "the pick says what is asked");
    assert.ok(pick.items.some((i) => /Open diff/.test(i.label)), "and offers the diff");
    const r = await resolved;
    assert.equal(r.by, "nvim");
    assert.equal(r.decision, "deny");
    await done;
    if (!pick.disposed) {
      await waitFor(stubModule.events, "quickPickDisposed", (q) => q === pick, "the quick pick taken down");
    }
    assert.equal(api.controller.pendingPrompts().length, 0);
    await other.dispose();
  });

  test("Always allow in the quick pick saves a rule that answers the next write; Permission Rules removes it", async () => {
    const v = fakeView();
    recorded.views.get(ext.VIEW_ID).resolveWebviewView(v.view);
    v.view.visible = false;
    const shown = waitFor<stubModule.StubQuickPick>(stubModule.events, "quickPick", (q) => /Crush wants to/.test(q.title), "the quick pick");
    const runId = await api.controller.send("#write with a rule");
    const done = waitFor<any>(api.client, "runComplete", (r) => r.runId === runId, "the run's end");
    const pick = await shown;
    const labels = pick.items.map((i) => i.label);
    for (const scope of ["in this session", "in this workspace", "everywhere"]) {
      assert.ok(labels.some((l) => l.includes(`Always allow write "**" ${scope}`)), labels.join("\n"));
    }
    // The pattern is asked for next, filled in with the daemon's suggestion. Escape: the quick
    // pick comes back, the prompt unanswered.
    const asked = recorded.inputBoxes.length;
    const back = waitFor<stubModule.StubQuickPick>(stubModule.events, "quickPick", (q) => q !== pick && /Crush wants to/.test(q.title), "the quick pick again");
    pick.choose(/in this workspace/);
    const pick2 = await back;
    assert.ok(pick.disposed, "the first quick pick made way for the input box");
    assert.equal(api.controller.pendingPrompts().length, 1, "still pending");
    // This time the user keeps the suggestion.
    user.inputBox = (opts) => opts.value;
    try {
      pick2.choose(/in this workspace/);
      await done;
    } finally {
      user.inputBox = undefined;
    }
    assert.equal(recorded.inputBoxes.length, asked + 2);
    assert.equal(recorded.inputBoxes[asked].value, "**");
    assert.equal(recorded.inputBoxes[asked + 1].value, "**");
    const rules = await api.controller.permissionRules();
    assert.equal(rules.length, 1);
    assert.equal(rules[0].tool, "write");
    assert.equal(rules[0].pattern, "**");
    assert.equal(rules[0].scope, "workspace");
    // The rule answers the next write: no prompt, the run completes.
    const picks = recorded.quickPicks.length;
    const next = await api.controller.send("#write once more");
    await waitFor<any>(api.client, "runComplete", (r) => r.runId === next, "the second run's end");
    assert.equal(recorded.quickPicks.length, picks, "no prompt for the second write");
    const log = await api.client.request("permission/log", { limit: 2 });
    assert.equal(log.entries[0].source, "rule");
    assert.equal(log.entries[0].ruleId, rules[0].id);
    assert.equal(log.entries[1].decision, "allowAlways");
    // Crush: Permission Rules — pick the rule, confirm, and it is gone.
    const pickFirst = user.quickPick;
    user.quickPick = (items: any[]) => {
      assert.equal(items[0].label, 'write "**"');
      assert.equal(items[0].description, "in this workspace");
      return items[0];
    };
    user.warningChoice = "Remove";
    try {
      assert.equal(await stub.commands.executeCommand("crush.permissionRules"), rules[0].id);
    } finally {
      user.quickPick = pickFirst;
      user.warningChoice = undefined;
    }
    assert.deepEqual(await api.controller.permissionRules(), []);
    await stub.commands.executeCommand("crush.permissionRules");
    assert.ok(recorded.info.some((m) => m.includes("no saved permission rules")), recorded.info.join("\n"));
    v.view.visible = true;
  });

  test("Always allow asks for the pattern: a refused one is said and the prompt stays; the edited one is saved", async () => {
    const v = fakeView();
    recorded.views.get(ext.VIEW_ID).resolveWebviewView(v.view);
    const prompted = waitPosted(v, (s) => s.prompts.length === 1, "the prompt");
    const runId = await api.controller.send("#write with my own rule");
    const done = waitFor<any>(api.client, "runComplete", (r) => r.runId === runId, "the run's end");
    const p = (await prompted).prompts[0];
    assert.equal(p.suggestedPattern, "**");
    // A glob outside the workspace: the daemon refuses it; the input box comes back with it and
    // the daemon's reason; Escape leaves the prompt waiting.
    const answers: Array<string | undefined> = ["../*.txt", undefined];
    user.inputBox = () => answers.shift();
    const asked = recorded.inputBoxes.length;
    const again = waitFor<any>(stubModule.events, "inputBox", (o) => o.value === "../*.txt", "the input box again");
    v.send({ type: "permission", requestId: p.requestId, decision: "allowAlways", scope: "workspace" });
    const second = await again;
    assert.equal(recorded.inputBoxes[asked].value, "**", "filled in with the suggestion");
    assert.match(recorded.inputBoxes[asked].title, /always allow write in this workspace/);
    assert.match(second.prompt, /Not saved: pattern: the path glob "\.\.\/\*\.txt" must be relative to the workspace/);
    assert.match(second.validateInput("../*.txt"), /must be relative to the workspace/, "the refused glob is marked");
    assert.equal(second.validateInput("*.txt"), undefined);
    await waitUntil(async () => (answers.length === 0 ? true : undefined), "the Escape");
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(api.controller.viewState().prompts.map((x) => x.requestId), [p.requestId], "the prompt is still shown");
    assert.equal(api.controller.sessionState, "waitingForPermission");
    assert.deepEqual(await api.controller.permissionRules(), [], "no rule saved");
    // Answered again, with the user's own glob.
    user.inputBox = () => "*.txt";
    try {
      v.send({ type: "permission", requestId: p.requestId, decision: "allowAlways", scope: "workspace" });
      await done;
    } finally {
      user.inputBox = undefined;
    }
    await waitPosted(v, (st) => st.prompts.length === 0, "the prompt taken down");
    const rules = await api.controller.permissionRules();
    assert.deepEqual(rules.map((r) => [r.tool, r.pattern, r.scope]), [["write", "*.txt", "workspace"]]);
    const log = await api.client.request("permission/log", { limit: 1 });
    assert.equal(log.entries[0].decision, "allowAlways");
    await api.controller.removePermissionRule(rules[0].id);
  });

  test("the session shown is remembered for the workspace and shown again after a reload (bug 3)", async () => {
    const shown = api.controller.model!.sessionId;
    assert.equal(stubModule.memento.get("crush.sessionId"), shown);
    const { Controller } = require("../src/controller") as typeof import("../src/controller");
    const fresh = new Controller(api.client, stub.window.createStatusBarItem() as any, ext.readSettings, { appendLine() {} } as any, {
      get: (k: string) => stubModule.memento.get(k) as any,
      update: async (k: string, v: unknown) => void stubModule.memento.set(k, v),
    });
    await fresh.connect();
    assert.equal(fresh.model?.sessionId, shown, "the reloaded window shows the same session");
    const before = (await api.client.request("session/list", { workspaceId: fresh.workspaceId! })).sessions.length;
    const runId = await fresh.send("again");
    await waitFor<any>(api.client, "runComplete", (r) => r.runId === runId, "the run's end");
    const after = (await api.client.request("session/list", { workspaceId: fresh.workspaceId! })).sessions.length;
    assert.equal(after, before, "no new session for the next Send");
    fresh.model?.removeAllListeners();
    await api.client.unfollow(shown);
    fresh.dispose();
    // Follow it again in the main controller (unfollow above dropped its subscription).
    const main = api.controller;
    main.model = undefined;
    await main.attach(shown);
  });

  test("the sender's window shows its prompt's attachments as soon as the prompt is in (bug 5)", async () => {
    const file = path.join(env.workspace, "att.ts");
    fs.writeFileSync(file, "x\n");
    const seen = waitFor<any>(api.client, "sessionUpdate", (e) => e.kind === "userMessage" && e.text === "look", "the userMessage event");
    const runId = await api.controller.send("look", "queue", [{ name: "att.ts:1-1", mimeType: "text/x-typescript", text: "x" }]);
    await seen;
    const item = api.controller.model!.items.find((i) => i.kind === "user" && i.text === "look") as any;
    assert.deepEqual(item.attachments, ["att.ts:1-1"]);
    await waitFor<any>(api.client, "runComplete", (r) => r.runId === runId, "the run's end");
  });

  test("another client's model change reaches this window (bug 4)", async () => {
    const sessionId = api.controller.model!.sessionId;
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { CrushClient } = require("../src/client") as typeof import("../src/client");
    const other = new CrushClient({ socketPath: env.socket, clientId: "model-changer", clientName: "nvim" });
    await other.start();
    const changed = await other.request("session/setModel", { sessionId, model: "mock/mock-1" });
    assert.equal(changed.model, "mock/mock-1");
    // Today's daemon announces no change: the window learns it when the session's next run ends.
    const runId = await other.request("agent/send", { sessionId, prompt: "hi", mode: "queue" }).then((r) => r.runId);
    await waitFor<any>(api.client, "runComplete", (r) => r.runId === runId, "the other client's run");
    const deadline = Date.now() + 10_000;
    while (api.controller.viewState().model !== "mock/mock-1" && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 5)); // polling the view state, bounded by the deadline
    }
    assert.equal(api.controller.viewState().model, "mock/mock-1");
    // The daemon's `sessionUpdated` event (the context issue) applies at once, title included.
    api.controller.model!.onEvent({
      sessionId,
      seq: Number.MAX_SAFE_INTEGER,
      kind: "sessionUpdated",
      session: { ...changed, title: "Renamed elsewhere", model: null },
    } as any);
    assert.equal(api.controller.viewState().model, undefined);
    assert.equal(api.controller.viewState().session?.title, "Renamed elsewhere");
    await other.dispose();
  });

  test("New Session from the palette reveals the chat view (bug 6)", async () => {
    recorded.executed.length = 0;
    await stub.commands.executeCommand("crush.newSession");
    assert.ok(recorded.executed.includes("crush.chat.focus"), `executed: ${recorded.executed.join(", ")}`);
  });

  test("send selection attaches the file and the line range", async () => {
    const file = path.join(env.workspace, "lib.ts");
    fs.writeFileSync(file, "a\nb\nc\n");
    stub.window.activeTextEditor = {
      selection: { isEmpty: false, start: { line: 1 }, end: { line: 2 } },
      document: { uri: stub.Uri.file(file), languageId: "typescript", getText: () => "b\nc" },
    };
    const runId = (await stub.commands.executeCommand("crush.sendSelection", "explain")) as string;
    await waitFor<any>(api.client, "runComplete", (r) => r.runId === runId, "the run's end");
    const msgs = await api.client.request("session/messages", { sessionId: api.controller.model!.sessionId, limit: 1000 });
    const user = msgs.messages.find((m) => m.runId === runId && m.role === "user")!;
    const att = (user.parts as any[]).find((p) => p.type === "attachment");
    assert.equal(att.name, "lib.ts:2-3");
    assert.equal(att.mimeType, "text/x-typescript");
    assert.equal(att.text, "b\nc");
  });

  test("compact, undo, redo, diff and fork from the palette", async () => {
    // (The mock answers the daemon's summary request like any other: "Hello from the mock.")
    const until = async (what: string, cond: () => boolean) => {
      if (!cond()) {
        await waitFor(api.controller.model!, "changed", () => cond(), what);
      }
    };
    await stub.commands.executeCommand("crush.newSession");
    const sessionId = api.controller.model!.sessionId;
    for (const prompt of ["first", "second", "third"]) {
      const runId = await api.controller.send(prompt);
      await waitFor<any>(api.client, "runComplete", (r) => r.runId === runId, "the run's end");
    }
    const compacted = (await stub.commands.executeCommand("crush.compactSession")) as any;
    assert.equal(compacted.compacted, true);
    await until("the summary note", () => api.controller.model!.items.some((i) => i.kind === "note"));
    const undone = (await stub.commands.executeCommand("crush.undo")) as any;
    assert.equal(undone.done, true);
    await until("the undone turn marked", () =>
      api.controller.model!.items.some((i) => i.kind === "user" && i.text === "third" && i.reverted === true),
    );
    assert.ok(recorded.info.some((m) => m.startsWith("Crush: Undone")), recorded.info.join("\n"));
    const redone = (await stub.commands.executeCommand("crush.redo")) as any;
    assert.equal(redone.done, true);
    const diff = (await stub.commands.executeCommand("crush.showDiff")) as any;
    assert.equal(diff.diff, "");
    assert.deepEqual(recorded.documents.at(-1), { language: "diff", content: "(no changes)" });
    const fork = (await stub.commands.executeCommand("crush.forkSession")) as any;
    assert.notEqual(fork.sessionId, sessionId);
    assert.equal(api.controller.model!.sessionId, fork.sessionId, "the copy is shown");
  });

  test("cancel, attach, daemon status and logs commands", async () => {
    const first = api.controller.model!.sessionId;
    await stub.commands.executeCommand("crush.newSession");
    assert.notEqual(api.controller.model!.sessionId, first);
    user.quickPick = (items: any[]) => items.find((i) => i.detail === first);
    const attached = await stub.commands.executeCommand("crush.attachSession");
    assert.equal(attached, first);
    assert.equal(api.controller.model!.sessionId, first);
    assert.ok(api.controller.model!.items.length > 0, "the attached session's history is loaded");
    assert.deepEqual(await stub.commands.executeCommand("crush.cancel"), []);
    const st = (await stub.commands.executeCommand("crush.showDaemonStatus")) as any;
    assert.equal(st.socket, env.socket);
    assert.ok(recorded.info.some((m) => m.includes(`socket ${env.socket}`)));
    await stub.commands.executeCommand("crush.openLogs");
    assert.equal(recorded.errors.length, 0, recorded.errors.join("\n"));
  });

  test("the MCP Servers view shows each server's state and error, and restarts one", async () => {
    assert.equal(recorded.views.get("crush.mcp"), api.mcpView);
    const servers = (await stub.commands.executeCommand("crush.refreshMcpServers")) as any[];
    const byName = new Map(servers.map((s) => [s.name, s]));
    assert.equal(byName.get("off")?.state, "disabled");
    const rows = api.mcpView.getChildren().map((n) => api.mcpView.getTreeItem(n) as any);
    const off = rows.find((r) => r.label === "off");
    assert.match(off.description, /^disabled/);
    // The broken server is started by the first run that needs tools, or by a restart.
    const restarted = (await stub.commands.executeCommand("crush.restartMcpServer", {
      kind: "server",
      info: byName.get("broken"),
    })) as any;
    assert.equal(restarted.name, "broken");
    const failed = await waitUntil(async () => {
      const all = (await stub.commands.executeCommand("crush.refreshMcpServers")) as any[];
      return all.find((s) => s.name === "broken" && s.state === "failed");
    }, "the broken server to fail");
    assert.match(failed.lastError, /nonexistent/);
    const row = api.mcpView
      .getChildren()
      .map((n) => api.mcpView.getTreeItem(n) as any)
      .find((r) => r.label === "broken");
    assert.match(row.description, /^failed/);
    assert.match(row.tooltip, /Last error: .*nonexistent/);
    assert.equal(row.contextValue, "mcpServer", "a failed server offers Restart");
    assert.equal(recorded.errors.length, 0, recorded.errors.join("\n"));
  });

  test("changing crush.remote moves the window to that daemon cleanly, and back; an unreachable one shows ssh's words", async () => {
    // "The other machine": a second daemon with its own directories, reached through a stand-in
    // ssh (a crushctl wrapper sets $CRUSHD_SSH) that runs the remote command with its environment.
    const there = new TestEnv(mock.baseUrl);
    const remoteDaemon = await there.spawnDaemon();
    const exports = Object.entries(there.env())
      .filter(([k]) => k.startsWith("XDG_") || k === "CRUSHD_SOCKET")
      .map(([k, v]) => `${k}='${v}'`)
      .join(" ");
    const ssh = path.join(there.dir, "fake-ssh");
    // While `down` exists it fails as ssh does when the host refuses.
    const down = path.join(there.dir, "down");
    fs.writeFileSync(
      ssh,
      `#!/bin/sh\nif [ -e '${down}' ]; then echo 'ssh: connect to host box port 22: Connection refused' >&2; exit 255; fi\n` +
        `for last; do :; done\nexport ${exports}\nexec sh -c "$last"\n`,
      { mode: 0o755 },
    );
    const wrapper = path.join(there.dir, "crushctl");
    fs.writeFileSync(wrapper, `#!/bin/sh\nCRUSHD_SSH='${ssh}' exec '${env.crushctl()}' "$@"\n`, { mode: 0o755 });
    const changed = (...keys: string[]) =>
      stubModule.events.emit("config", { affectsConfiguration: (s: string) => keys.some((k) => k === s || k.startsWith(`${s}.`)) });
    const local = api.controller.model!.sessionId;
    const observer = new (require("../src/client") as typeof import("../src/client")).CrushClient({ socketPath: env.socket, clientId: "observer" });
    const connections = async () => (await observer.request("daemon/status", {})).connections;
    try {
      await observer.start();
      assert.equal(await connections(), 2, "this window and the observer");
      const infos = recorded.info.length;
      const moved = waitFor(api.client, "initialized", () => true, "the connection to the other daemon");
      config["crush.remote"] = "box";
      config["crush.remoteWorkspace"] = there.workspace;
      config["crush.remoteCrushctl"] = env.crushctl();
      config["crush.crushctlPath"] = wrapper;
      changed("crush.remote", "crush.remoteWorkspace", "crush.remoteCrushctl", "crush.crushctlPath");
      await moved;
      // The old daemon saw a clean goodbye: only the observer is left.
      await waitUntil(async () => ((await connections()) === 1 ? true : undefined), "the window to leave the old daemon");
      await waitUntil(async () => (recorded.info.length > infos ? true : undefined), "the note saying where the window is now");
      assert.match(recorded.info.at(-1)!, /now using crushd on box .*this machine's crushd are still there/);
      const st = await api.client.request("daemon/status", {});
      assert.equal(st.socket, there.socket, "connected to the other daemon");
      assert.equal(api.controller.workspacePath, fs.realpathSync(there.workspace));
      assert.equal(api.controller.model, undefined, "the old daemon's session is not shown");
      assert.deepEqual(api.controller.sessions, []);
      // A prompt runs there, in a session of its own.
      const runId = await api.controller.send("over there");
      await waitFor<any>(api.client, "runComplete", (r) => r.runId === runId, "the run on the other daemon");
      const remoteSession = api.controller.model!.sessionId;
      assert.notEqual(remoteSession, local);

      // The tunnel drops and the host refuses for a while: the reconnects in the background fail
      // with ssh's words, shown once, not at every attempt; when it answers again, it says so.
      fs.writeFileSync(down, "");
      // Answered after every request sent before it was written (the run's end has the window
      // read the session again): the drop then cuts no write short.
      await api.client.request("daemon/status", {});
      const shownBefore = recorded.errors.length;
      let failures = 0;
      const thrice = waitFor<Error>(api.client, "reconnectFailed", (e) => {
        assert.match(e.message, /^cannot reach crushd on box over SSH: ssh: connect to host box port 22: Connection refused/);
        return ++failures === 3;
      }, "three failed reconnects");
      api.client.dropConnection();
      await thrice;
      assert.deepEqual(recorded.errors.slice(shownBefore), [
        "Crush: cannot reach crushd on box over SSH: ssh: connect to host box port 22: Connection refused",
      ]);
      fs.rmSync(down);
      await api.client.reconnectNow();
      await waitUntil(async () => (api.controller.model?.sessionId === remoteSession && api.client.state === "connected" ? true : undefined), "reconnected");

      // Back to this machine: the session shown here before is shown again.
      const back = waitFor(api.client, "initialized", () => true, "the connection back");
      config["crush.remote"] = "";
      config["crush.crushctlPath"] = env.crushctl();
      changed("crush.remote", "crush.crushctlPath");
      await back;
      await waitUntil(async () => (api.controller.model?.sessionId === local ? true : undefined), "the local session shown again");
      assert.equal((await api.client.request("daemon/status", {})).socket, env.socket);

      // An unreachable host: the error notification quotes ssh (the real one).
      const port = await deadPort();
      const errors = recorded.errors.length;
      config["crush.remote"] = `127.0.0.1:${port}`;
      changed("crush.remote");
      await waitUntil(async () => (recorded.errors.length > errors ? true : undefined), "the error notification");
      assert.equal(
        recorded.errors.at(-1),
        `Crush: cannot reach crushd on 127.0.0.1:${port} over SSH: ssh: connect to host 127.0.0.1 port ${port}: Connection refused`,
      );
      assert.equal(api.client.state, "disconnected");
    } finally {
      config["crush.remote"] = "";
      config["crush.remoteWorkspace"] = "";
      config["crush.remoteCrushctl"] = "";
      config["crush.crushctlPath"] = env.crushctl();
      const home = waitFor(api.client, "initialized", () => true, "the connection home");
      changed("crush.remote");
      await home;
      recorded.errors.length = 0;
      await observer.dispose();
      await remoteDaemon.stop();
      there.cleanup();
    }
  });

  test("turning yolo on warns", async () => {
    config["crush.yolo"] = true;
    const warned = waitFor<string>(stubModule.events, "warning", (m) => /yolo/.test(m), "the yolo warning");
    stubModule.events.emit("config", { affectsConfiguration: (s: string) => s === "crush.yolo" });
    await warned;
    config["crush.yolo"] = false;
  });
});
