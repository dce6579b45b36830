// An ACP client built on the official TypeScript SDK (@agentclientprotocol/sdk), remote-
// controlled by tests/tests/acp.rs: it spawns the agent given on its command line
// (`crushctl acp`), and speaks ACP to it through the SDK, which validates every message the
// agent sends against the ACP schema.
//
// Commands, one JSON object per line on stdin:
//   {"id": N, "op": "request", "method": "session/new", "params": {...}}
//        -> {"id": N, "result": ...} or {"id": N, "error": {"code", "message"}}
//   {"op": "notify", "method": "session/cancel", "params": {...}}
//   {"op": "answer", "key": K, "response": {"outcome": {...}}}   answers permission K
//   {"op": "close"}   closes the agent's stdin
// Events, one JSON object per line on stdout:
//   {"event": "update", "params": <session/update params>, "at": <ms>}
//   {"event": "permission", "key": K, "params": <session/request_permission params>}
//   {"event": "withdrawn", "key": K}      the agent cancelled permission K ($/cancel_request)
//   {"event": "exit", "code": C}          the agent exited
// The SDK's location: $CRUSH_ACP_CLIENTS (installed by .ci/run from tests/acp/package.json).
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { Readable, Writable } from "node:stream";
import { pathToFileURL } from "node:url";

const dir = process.env.CRUSH_ACP_CLIENTS;
if (!dir) {
  console.error("driver.mjs: CRUSH_ACP_CLIENTS is not set");
  process.exit(2);
}
const require = createRequire(join(dir, "node_modules", "index.js"));
const acp = await import(pathToFileURL(require.resolve("@agentclientprotocol/sdk")).href);

const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const now = () => performance.timeOrigin + performance.now();

const [cmd, ...args] = process.argv.slice(2);
const agent = spawn(cmd, args, { stdio: ["pipe", "pipe", "inherit"] });
agent.on("exit", (code, signal) => emit({ event: "exit", code, signal }));
emit({ event: "spawned", pid: agent.pid });

const permissions = new Map();
let nextKey = 0;

const app = acp
  .client({ name: "crush-acp-test" })
  .onNotification(acp.methods.client.session.update, async ({ params }) => {
    emit({ event: "update", params, at: now() });
  })
  .onRequest(acp.methods.client.session.requestPermission, ({ params, signal }) => {
    const key = ++nextKey;
    emit({ event: "permission", key, params, at: now() });
    return new Promise((resolve, reject) => {
      permissions.set(key, resolve);
      signal?.addEventListener("abort", () => {
        permissions.delete(key);
        emit({ event: "withdrawn", key });
        reject(signal.reason);
      });
    });
  });

const stream = acp.ndJsonStream(Writable.toWeb(agent.stdin), Readable.toWeb(agent.stdout));

await app
  .connectWith(stream, async (ctx) => {
    const lines = createInterface({ input: process.stdin });
    for await (const line of lines) {
      if (!line.trim()) continue;
      const c = JSON.parse(line);
      if (c.op === "request") {
        ctx.request(c.method, c.params ?? {}).then(
          (result) => emit({ id: c.id, result: result ?? null, at: now() }),
          (e) => emit({ id: c.id, error: { code: e.code ?? null, message: String(e.message ?? e) }, at: now() }),
        );
      } else if (c.op === "notify") {
        ctx.notify(c.method, c.params ?? {});
      } else if (c.op === "answer") {
        permissions.get(c.key)?.(c.response);
        permissions.delete(c.key);
      } else if (c.op === "close") {
        agent.stdin.end();
        await new Promise((r) => (agent.exitCode !== null ? r() : agent.on("exit", r)));
        return;
      }
    }
  })
  .catch((e) => emit({ event: "connectionError", message: String(e?.message ?? e) }));
// Report how the agent ended before leaving.
if (agent.exitCode === null && agent.signalCode === null) {
  await new Promise((r) => {
    agent.on("exit", r);
    setTimeout(r, 5000);
  });
}
process.exit(0);
