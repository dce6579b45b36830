// The protocol client against real crushd processes and the loopback model mock.
import { after, before, describe, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { randomUUID } from "node:crypto";
import { spawnSync } from "node:child_process";
import { CrushClient, startFailure, SupersededError } from "../src/client";
import { SessionModel } from "../src/sessionModel";
import type { RunCompleteParams, SessionSubscribeResult } from "../src/protocol.generated";
import { Daemon, deadPort, TestEnv, waitFor, waitUntil } from "./support/daemon";
import { MockLlm } from "./support/mockLlm";

function newClient(env: TestEnv, name = "vscode-test", extra: Partial<ConstructorParameters<typeof CrushClient>[0]> = {}) {
  return new CrushClient({ socketPath: env.socket, clientId: randomUUID(), clientName: name, ...extra });
}

async function session(client: CrushClient, env: TestEnv) {
  const ws = await client.openWorkspace(env.workspace);
  const s = await client.request("session/create", { workspaceId: ws.workspaceId, title: "t", yolo: false });
  const model = new SessionModel(s.sessionId, client);
  await client.follow(s.sessionId, model);
  return { sessionId: s.sessionId, model };
}

function runComplete(client: CrushClient, runId: string) {
  return waitFor<RunCompleteParams>(client, "runComplete", (p) => p.runId === runId, `$/runComplete of ${runId}`);
}

function assistantText(model: SessionModel): string {
  return model.items.filter((i) => i.kind === "assistant").map((i) => (i as { text: string }).text).join("|");
}

describe("protocol client against a real daemon", () => {
  let mock: MockLlm;
  let env: TestEnv;
  let daemon: Daemon;
  const clients: CrushClient[] = [];

  before(async () => {
    mock = await MockLlm.start();
    env = new TestEnv(mock.baseUrl);
    daemon = await env.spawnDaemon();
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.dispose()));
    await daemon.stop();
    await mock.close();
    env.cleanup();
  });

  test("send streams the reply into the session view and ends with $/runComplete", async () => {
    const c = newClient(env);
    clients.push(c);
    const info = await c.start();
    assert.equal(info.protocolVersion, 1);
    assert.equal(info.clientId, c.opts.clientId);
    const { sessionId, model } = await session(c, env);
    const runId = randomUUID();
    const done = runComplete(c, runId);
    const deltas: string[] = [];
    c.on("sessionUpdate", (ev) => ev.kind === "textDelta" && deltas.push(ev.text));
    const r = await c.request("agent/send", { sessionId, prompt: "hi", attachments: [], runId, mode: "queue", yolo: false });
    assert.equal(r.runId, runId);
    const rc = await done;
    assert.equal(rc.cancelled, false);
    assert.equal(rc.text, "Hello from the mock.");
    assert.ok(deltas.length >= 1);
    assert.equal(assistantText(model), "Hello from the mock.");
    assert.equal(model.items[0].kind, "user");
    assert.equal(model.state, "idle");
  });

  test("cancel ends a streaming run as cancelled", async () => {
    const c = newClient(env);
    clients.push(c);
    const { sessionId, model } = await session(c, env);
    const runId = randomUUID();
    const done = runComplete(c, runId);
    const holding = mock.whenHolding();
    await c.request("agent/send", { sessionId, prompt: "#hold please", attachments: [], runId, mode: "queue", yolo: false });
    await holding;
    await waitFor(c, "sessionUpdate", (ev: any) => ev.kind === "textDelta", "the first delta");
    assert.equal(model.state, "running");
    const cancelled = await c.request("agent/cancel", { sessionId });
    assert.deepEqual(cancelled.cancelled, [runId]);
    const rc = await done;
    assert.equal(rc.cancelled, true);
    assert.equal(rc.text, "w0");
    const a = model.items.find((i) => i.kind === "assistant") as { finishReason?: string };
    assert.equal(a.finishReason, "canceled");
    assert.equal(model.state, "idle");
  });

  test("a permission request is answered, and withdrawn from the client that did not answer", async () => {
    const a = newClient(env, "client-a");
    const b = newClient(env, "client-b");
    clients.push(a, b);
    const { sessionId, model } = await session(a, env);
    await b.start();
    const modelB = new SessionModel(sessionId, b);
    await b.follow(sessionId, modelB);
    // A answers; B's copy of the prompt must be withdrawn.
    a.setPermissionHandler(async (p) => {
      assert.equal(p.tool, "write");
      assert.match(p.title, /hello\.txt/);
      assert.match(p.diff ?? "", /\+hello crush/);
      return "allow";
    });
    let bAsked = false;
    b.setPermissionHandler(
      (_p, token) =>
        new Promise((_resolve, reject) => {
          bAsked = true;
          token.onCancellationRequested(() => reject(new Error("withdrawn")));
        }),
    );
    const withdrawn = waitFor<string>(b, "permissionWithdrawn", () => true, "B's prompt withdrawn");
    const resolved = waitFor<any>(b, "permissionResolved", () => true, "$/permissionResolved on B");
    const runId = randomUUID();
    const done = runComplete(a, runId);
    const doneB = runComplete(b, runId);
    await a.request("agent/send", { sessionId, prompt: "#write hello.txt", attachments: [], runId, mode: "queue", yolo: false });
    const rc = await done;
    assert.equal(rc.text, "Done.");
    await doneB;
    const res = await resolved;
    assert.equal(res.decision, "allow");
    assert.equal(res.by, "client-a");
    if (bAsked) {
      await withdrawn;
    }
    assert.equal(fs.readFileSync(path.join(env.workspace, "hello.txt"), "utf8"), "hello crush\n");
    const tool = model.items.find((i) => i.kind === "tool") as { status?: string; diff?: string };
    assert.equal(tool.status, "completed");
    assert.match(tool.diff ?? "", /hello crush/);
    assert.equal(assistantText(modelB), assistantText(model));
  });

  test("after a dropped connection the client resubscribes from its cursor and replays what it missed", async () => {
    const c = newClient(env, "vscode-test", { backoffMs: { initial: 60_000, max: 60_000 } });
    const observer = newClient(env, "observer");
    clients.push(c, observer);
    const { sessionId, model } = await session(c, env);
    await observer.start();
    await observer.follow(sessionId, new SessionModel(sessionId, observer));
    const runId = randomUUID();
    const holding = mock.whenHolding();
    const firstDelta = waitFor(c, "sessionUpdate", (ev: any) => ev.kind === "textDelta", "the first delta");
    await c.request("agent/send", { sessionId, prompt: "#hold on", attachments: [], runId, mode: "queue", yolo: false });
    await holding;
    await firstDelta;
    const before = c.cursor(sessionId)!;
    assert.ok(before.seq! > 0);
    const gone = waitFor(c, "state", (s) => s === "disconnected", "the drop");
    c.dropConnection();
    await gone;
    // The run finishes while the client is away.
    const observed = runComplete(observer, runId);
    mock.release();
    await observed;
    const resubscribed = waitFor<{ sessionId: string; result: SessionSubscribeResult }>(c, "resubscribed", (r) => r.sessionId === sessionId, "the resubscribe");
    await c.reconnectNow();
    const { result } = await resubscribed;
    assert.equal(result.resync, false);
    assert.ok(result.replayed > 0, `replayed ${result.replayed}`);
    assert.equal(c.cursor(sessionId)!.seq, result.seq);
    assert.equal(assistantText(model), "w0 w1");
    assert.equal(model.state, "idle");
  });

  test("reconnecting to a restarted daemon resyncs the view from the database", async () => {
    const c = newClient(env, "vscode-test", { backoffMs: { initial: 60_000, max: 60_000 } });
    clients.push(c);
    const { sessionId, model } = await session(c, env);
    const runId = randomUUID();
    const done = runComplete(c, runId);
    await c.request("agent/send", { sessionId, prompt: "hello", attachments: [], runId, mode: "queue", yolo: false });
    await done;
    const epoch = c.cursor(sessionId)!.epoch;
    const gone = waitFor(c, "state", (s) => s === "disconnected", "the drop");
    await daemon.stop();
    await gone;
    daemon = await env.spawnDaemon();
    let rebuilt = false;
    const orig = model.rebuild.bind(model);
    model.rebuild = async (r) => {
      rebuilt = true;
      return orig(r);
    };
    const resubscribed = waitFor<{ result: SessionSubscribeResult }>(c, "resubscribed", () => true, "the resubscribe");
    await c.reconnectNow();
    const { result } = await resubscribed;
    assert.equal(result.resync, true);
    assert.notEqual(result.epoch, epoch);
    assert.ok(rebuilt);
    assert.equal(assistantText(model), "Hello from the mock.");
    assert.equal(c.cursor(sessionId)!.epoch, result.epoch);
  });
});

describe("daemon start", () => {
  test("start() runs `crushctl daemon start` when nothing answers on the socket", async () => {
    const mock = await MockLlm.start();
    const env = new TestEnv(mock.baseUrl);
    const c = new CrushClient({ socketPath: env.socket, clientId: randomUUID(), crushctlPath: env.crushctl(), env: env.env() });
    try {
      const info = await c.start();
      assert.ok(info.pid > 0);
      const st = await c.request("daemon/status", {});
      assert.equal(st.socket, env.socket);
      const closed = waitFor(c, "state", (s) => s === "disconnected", "the daemon closing the connection");
      await c.request("daemon/shutdown", { force: true });
      await closed;
    } finally {
      await c.dispose();
      await mock.close();
      env.cleanup();
    }
  });

  test("a failed autostart leaves the client disconnected and names the setting to fix (bug 1)", async () => {
    const env = new TestEnv("http://127.0.0.1:9/v1");
    const states: string[] = [];
    const c = new CrushClient({
      socketPath: env.socket,
      clientId: randomUUID(),
      crushctlPath: path.join(env.dir, "no-such-crushctl"),
      env: env.env(),
    });
    c.on("state", (s) => states.push(s));
    try {
      const err = await c.start().then(
        () => assert.fail("start() succeeded without crushctl"),
        (e: Error) => e,
      );
      assert.match(err.message, /was not found; set crush\.crushctlPath/);
      assert.doesNotMatch(err.message, /:\s*$/, "no empty tail after a colon");
      assert.equal(c.state, "disconnected", `states: ${states.join(" → ")}`);
      assert.deepEqual(states, ["connecting", "disconnected"]);
    } finally {
      await c.dispose();
      env.cleanup();
    }
  });

  test("a crushctl that fails with nothing to say still gives a message that ends in words", () => {
    const e = Object.assign(new Error("Command failed"), { code: 3 });
    assert.equal(startFailure("crushctl", e as never, "", ""), "could not start crushd: `crushctl daemon start` exited with status 3");
    assert.match(startFailure("crushctl", e as never, "crushd: bad config\n", ""), /status 3: crushd: bad config$/);
  });

  test("start() without crushctl reports that nothing answers", async () => {
    const c = new CrushClient({ socketPath: "/nonexistent/crushd.sock", clientId: randomUUID() });
    await assert.rejects(c.start(), /ENOENT/);
    await c.dispose();
  });
});

describe("crush.remote: a daemon reached through `crushctl --remote HOST proxy`", () => {
  // The stand-in ssh ($CRUSHD_SSH) runs the remote command on this machine and logs its
  // arguments; the real OpenSSH path is tests/tests/remote_ssh.rs.
  function fakeSsh(env: TestEnv, script: string): string {
    const p = path.join(env.dir, "fake-ssh");
    fs.writeFileSync(p, `#!/bin/sh\necho "$@" >> '${path.join(env.dir, "ssh-calls")}'\n${script}\n`, { mode: 0o755 });
    return p;
  }

  /** A client of the daemon on `host`, reached through `crushctl --remote` (no local socket). */
  function remoteOptions(env: TestEnv, host: string, environ: NodeJS.ProcessEnv) {
    return {
      socketPath: "/nonexistent/not-used.sock",
      clientId: randomUUID(),
      crushctlPath: env.crushctl(),
      remote: { host },
      env: environ,
    };
  }

  /** The error `start()` fails with (it must fail). */
  function startError(c: CrushClient): Promise<Error> {
    return c.start().then(
      () => assert.fail("start() succeeded"),
      (e: Error) => e,
    );
  }

  test("runs a prompt over the remote proxy (autostarting that daemon) and replays across a dropped tunnel", async () => {
    const mock = await MockLlm.start();
    const env = new TestEnv(mock.baseUrl);
    const ssh = fakeSsh(env, 'for last; do :; done\nexec sh -c "$last"');
    const c = new CrushClient({
      ...remoteOptions(env, "box", { ...env.env(), CRUSHD_SSH: ssh, CRUSHD_REMOTE_CRUSHCTL: env.crushctl() }),
      backoffMs: { initial: 60_000, max: 60_000 },
    });
    const observer = newClient(env, "observer");
    try {
      const info = await c.start();
      assert.ok(info.pid > 0);
      const st = await c.request("daemon/status", {});
      assert.equal(st.socket, env.socket, "the daemon the remote proxy started");
      const { sessionId, model } = await session(c, env);
      await observer.start();
      await observer.follow(sessionId, new SessionModel(sessionId, observer));
      const runId = randomUUID();
      const holding = mock.whenHolding();
      const firstDelta = waitFor(c, "sessionUpdate", (ev: any) => ev.kind === "textDelta", "the first delta");
      await c.request("agent/send", { sessionId, prompt: "#hold on", attachments: [], runId, mode: "queue", yolo: false });
      await holding;
      await firstDelta;
      const gone = waitFor(c, "state", (s) => s === "disconnected", "the drop");
      c.dropConnection();
      await gone;
      const observed = runComplete(observer, runId);
      mock.release();
      await observed;
      const resubscribed = waitFor<{ sessionId: string; result: SessionSubscribeResult }>(c, "resubscribed", (r) => r.sessionId === sessionId, "the resubscribe");
      await c.reconnectNow();
      const { result } = await resubscribed;
      assert.equal(result.resync, false);
      assert.ok(result.replayed > 0, `replayed ${result.replayed}`);
      assert.equal(assistantText(model), "w0 w1");
      const calls = fs.readFileSync(path.join(env.dir, "ssh-calls"), "utf8");
      assert.equal(calls.match(/-- box '.*crushctl' proxy/g)?.length, 2, calls);
      const closed = waitFor(c, "state", (s) => s === "disconnected", "the daemon closing the connection");
      await c.request("daemon/shutdown", { force: true });
      await closed;
    } finally {
      await observer.dispose();
      await c.dispose();
      await mock.close();
      env.cleanup();
    }
  });

  test("a real ssh to a port where nothing listens: the failure quotes ssh's own words, every time", async () => {
    const env = new TestEnv("http://127.0.0.1:9/v1");
    const port = await deadPort();
    const environ = { ...env.env() };
    delete environ.CRUSHD_SSH;
    const c = new CrushClient(remoteOptions(env, `127.0.0.1:${port}`, environ));
    try {
      // Several attempts: ssh's message must not depend on its stderr being read before its exit.
      for (let i = 0; i < 5; i++) {
        const err = await startError(c);
        assert.equal(
          err.message,
          `cannot reach crushd on 127.0.0.1:${port} over SSH: ssh: connect to host 127.0.0.1 port ${port}: Connection refused`,
        );
        assert.equal(c.state, "disconnected");
      }
    } finally {
      await c.dispose();
      env.cleanup();
    }
  });

  test("retarget while a connection is being made: that one is dropped, the new target is used", async () => {
    const env = new TestEnv("http://127.0.0.1:9/v1");
    const daemon = await env.spawnDaemon();
    // An ssh that never gets anywhere (a host that does not answer).
    const ssh = fakeSsh(env, "exec sleep 60");
    const c = new CrushClient({
      socketPath: env.socket,
      clientId: randomUUID(),
      crushctlPath: env.crushctl(),
      remote: { host: "slow" },
      env: { ...env.env(), CRUSHD_SSH: ssh },
    });
    try {
      const first = c.start();
      await waitUntil(async () => (fs.existsSync(path.join(env.dir, "ssh-calls")) ? true : undefined), "ssh started");
      await c.retarget({ socketPath: env.socket, crushctlPath: env.crushctl(), remote: undefined });
      await assert.rejects(first, SupersededError);
      const info = await c.start();
      assert.ok(info.pid > 0);
      const st = await c.request("daemon/status", {});
      assert.equal(st.socket, env.socket);
      assert.equal(st.connections, 1, "one connection: the dropped attempt left none behind");
      assert.equal(c.state, "connected");
    } finally {
      await c.dispose();
      await daemon.stop();
      env.cleanup();
    }
  });

  test("ssh's words that come after its exit are still quoted", async () => {
    // The process exits at once; what it says reaches stderr later (a child of it still holds
    // stderr): the failure must wait for the end of stderr, not only for the exit.
    const env = new TestEnv("http://127.0.0.1:9/v1");
    const ssh = fakeSsh(env, '(sleep 0.3; echo "ssh: said after the exit" >&2) &\nexit 255');
    const c = new CrushClient(remoteOptions(env, "late", { ...env.env(), CRUSHD_SSH: ssh }));
    try {
      const err = await startError(c);
      assert.match(err.message, /ssh: said after the exit/);
    } finally {
      await c.dispose();
      env.cleanup();
    }
  });

  test("a connection that ends inside a message leaves nothing running: the process can exit", () => {
    // vscode-jsonrpc re-arms a 10 s "partial message" timer forever for a frame cut short, and
    // disposing the reader does not stop it: a window (or this test run) would never exit.
    const env = new TestEnv("http://127.0.0.1:9/v1");
    const ssh = fakeSsh(env, `printf 'Content-Length: 100\\r\\n\\r\\n{"jsonrpc"'\nexit 255`);
    const script = path.join(env.dir, "partial.js");
    const options = remoteOptions(env, "cut", { ...env.env(), CRUSHD_SSH: ssh });
    fs.writeFileSync(
      script,
      // As in the extension host, an unhandled rejection is reported, not fatal.
      `process.on("unhandledRejection", () => {});
const { CrushClient } = require(${JSON.stringify(path.join(__dirname, "..", "src", "client.js"))});
const c = new CrushClient(${JSON.stringify(options)});
c.start().then(() => console.log("connected"), (e) => console.log("failed: " + e.message)).finally(() => c.dispose());
`,
    );
    try {
      const r = spawnSync(process.execPath, [script], { timeout: 15_000, encoding: "utf8" });
      assert.match(r.stdout, /^failed: /, r.stderr);
      assert.equal(r.signal, null, `the process did not exit after the client was disposed: ${r.stdout}`);
    } finally {
      env.cleanup();
    }
  });

  test("an unreachable host fails with ssh's words and leaves the client disconnected", async () => {
    const env = new TestEnv("http://127.0.0.1:9/v1");
    const ssh = fakeSsh(env, 'echo "ssh: Could not resolve hostname nohost: Name or service not known" >&2\nexit 255');
    const c = new CrushClient(remoteOptions(env, "nohost", { ...env.env(), CRUSHD_SSH: ssh }));
    try {
      const err = await startError(c);
      assert.match(err.message, /^cannot reach crushd on nohost over SSH: ssh: Could not resolve hostname nohost/);
      assert.equal(c.state, "disconnected");
    } finally {
      await c.dispose();
      env.cleanup();
    }
  });
});
