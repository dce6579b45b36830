// A real crushd for the tests: its own temp dirs (XDG_*), socket and config pointing at the
// mock model server. The binaries come from CRUSH_TEST_BIN_DIR (set by
// tests/tests/editor_vscode.rs); waits are on the daemon's "listening" log line, with a deadline.
import { ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";

export const DEADLINE_MS = 10_000;

export function binDir(): string {
  const dir = process.env.CRUSH_TEST_BIN_DIR;
  if (!dir) {
    throw new Error("CRUSH_TEST_BIN_DIR is not set: run these tests through `cargo test -p crush-tests --test editor_vscode`");
  }
  return dir;
}

export class TestEnv {
  readonly dir: string;
  readonly socket: string;

  constructor(modelBaseUrl: string) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "crush-vscode-test-"));
    this.socket = path.join(this.dir, "run", "crushd.sock");
    const cfg = path.join(this.dir, "config", "crushd");
    fs.mkdirSync(cfg, { recursive: true });
    fs.writeFileSync(
      path.join(cfg, "config.toml"),
      `default_model = "mock/mock-1"\n\n[providers.mock]\ntype = "openai"\nbase_url = "${modelBaseUrl}"\n` +
        // Two MCP servers for the MCP Servers view: one whose program does not exist (it fails
        // with the reason) and one turned off.
        `\n[mcp.servers.broken]\ncommand = "/nonexistent/crush-test-mcp-server"\n` +
        `\n[mcp.servers.off]\ncommand = "true"\nenabled = false\n`,
    );
    fs.mkdirSync(path.join(this.dir, "workspace"));
  }

  get workspace(): string {
    return path.join(this.dir, "workspace");
  }

  env(): NodeJS.ProcessEnv {
    const env = { ...process.env };
    delete env.CRUSHD_BIN;
    return {
      ...env,
      XDG_RUNTIME_DIR: path.join(this.dir, "xdg-run"),
      XDG_STATE_HOME: path.join(this.dir, "state"),
      XDG_CONFIG_HOME: path.join(this.dir, "config"),
      XDG_DATA_HOME: path.join(this.dir, "data"),
      CRUSHD_SOCKET: this.socket,
      CRUSHD_LOG: "info",
    };
  }

  crushctl(): string {
    return path.join(binDir(), "crushctl");
  }

  /** Starts `crushd --foreground` and waits until it listens. */
  async spawnDaemon(): Promise<Daemon> {
    const child = spawn(path.join(binDir(), "crushd"), ["--foreground", "--socket", this.socket], {
      env: this.env(),
      stdio: ["ignore", "ignore", "pipe"],
    });
    const d = new Daemon(child);
    await d.waitForLog("listening");
    return d;
  }

  cleanup(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export class Daemon {
  private lines: string[] = [];
  private waiters: Array<() => void> = [];
  readonly exited: Promise<number | null>;

  constructor(readonly child: ChildProcess) {
    let partial = "";
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (s: string) => {
      partial += s;
      const parts = partial.split("\n");
      partial = parts.pop() ?? "";
      this.lines.push(...parts);
      if (process.env.CRUSHD_TEST_ECHO) {
        parts.forEach((l) => process.stderr.write(`[crushd] ${l}\n`));
      }
      const w = this.waiters;
      this.waiters = [];
      w.forEach((f) => f());
    });
    this.exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  }

  async waitForLog(needle: string, deadlineMs = DEADLINE_MS): Promise<string> {
    const end = Date.now() + deadlineMs;
    for (;;) {
      const hit = this.lines.find((l) => l.includes(needle));
      if (hit) {
        return hit;
      }
      const left = end - Date.now();
      if (left <= 0 || this.child.exitCode !== null) {
        throw new Error(`crushd never logged ${JSON.stringify(needle)}; log:\n${this.lines.join("\n")}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
        this.child.once("exit", () => resolve());
      });
    }
  }

  /** SIGTERM and wait for the exit. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null) {
      this.child.kill("SIGTERM");
      await this.exited;
    }
  }
}

/** Resolves when `pred` holds for an emitted event, or rejects at the deadline. */
export function waitFor<T>(
  emitter: NodeJS.EventEmitter,
  event: string,
  pred: (v: T) => boolean = () => true,
  what = event,
  deadlineMs = DEADLINE_MS,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, on);
      reject(new Error(`timed out after ${deadlineMs} ms waiting for ${what}`));
    }, deadlineMs);
    const on = (v: T) => {
      if (pred(v)) {
        clearTimeout(timer);
        emitter.removeListener(event, on);
        resolve(v);
      }
    };
    emitter.on(event, on);
  });
}

/**
 * Asks `probe` again (every 50 ms) until it returns a value, or rejects at the deadline: for
 * daemon state that no notification announces (an MCP server's state), read with a request.
 */
export async function waitUntil<T>(
  probe: () => Promise<T | undefined>,
  what: string,
  deadlineMs = DEADLINE_MS,
): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) {
      return v;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A 127.0.0.1 port nothing listens on: bound, then released. */
export function deadPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
