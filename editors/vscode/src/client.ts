// The protocol client: one JSON-RPC connection (vscode-jsonrpc over a Node socket, or over the
// stdio of `crushctl --remote HOST proxy` for a daemon on another machine) to crushd,
// started with `crushctl daemon start` when nobody answers, kept alive across drops with a
// backoff, and the sessions it follows resubscribed from their cursors (epoch + last seq,
// docs/protocol.md §7 "Sharing sessions between clients"). It must not import `vscode`: the
// tests run it under plain Node against a real daemon.
import { EventEmitter } from "node:events";
import * as net from "node:net";
import { ChildProcess, execFile, spawn } from "node:child_process";
import {
  CancellationToken,
  createMessageConnection,
  ErrorCodes as JsonRpcErrorCodes,
  MessageConnection,
  MessageReader,
  MessageWriter,
  ResponseError,
  SocketMessageReader,
  SocketMessageWriter,
  StreamMessageReader,
  StreamMessageWriter,
} from "vscode-jsonrpc/node";
import type {
  InitializeResult,
  PermissionDecision,
  PermissionRequestParams,
  PermissionRequestResult,
  PermissionResolvedParams,
  Requests,
  RunCompleteParams,
  SessionSubscribeResult,
  SessionUpdateParams,
} from "./protocol.generated";
import { PROTOCOL_VERSION } from "./protocol.generated";

export type Method = keyof Requests;
export type Params<M extends Method> = Requests[M]["params"];
export type Result<M extends Method> = Requests[M]["result"];

/** Error codes the extension branches on (docs/protocol.md §8). */
export const ErrorCodes = {
  RequestCancelled: -32800,
  InvalidParams: -32602,
  SessionNotFound: -32011,
  PermissionResolved: -32017,
  PermissionNotFound: -32016,
  PermissionRuleNotFound: -32018,
  ModelNotConfigured: -32030,
} as const;

export interface ClientOptions {
  socketPath: string;
  /** Stable per editor window; reused across reconnects. */
  clientId: string;
  clientName?: string;
  clientVersion?: string;
  /** `crushctl` to run as `crushctl --socket PATH daemon start` when nothing answers; unset: never start. */
  crushctlPath?: string;
  /**
   * The daemon on another machine: the client runs `crushctl --remote HOST proxy` (ssh, keys from
   * an agent or ~/.ssh/config) and speaks over its stdio; `socketPath` is then not used.
   */
  remote?: RemoteOptions;
  /** Environment for crushctl (defaults to process.env). */
  env?: NodeJS.ProcessEnv;
  /** Reconnect delays: first, and the cap of the doubling. */
  backoffMs?: { initial: number; max: number };
  log?: (line: string) => void;
}

export interface RemoteOptions {
  /** `[ssh://][user@]host[:port]`, or a Host alias of ~/.ssh/config. */
  host: string;
  /** The crushctl on that machine when it is not on its PATH (`--remote-crushctl`). */
  crushctl?: string;
}

/** A byte stream to crushd: the local socket, or a remote proxy's stdio. */
interface Transport {
  reader: MessageReader;
  writer: MessageWriter;
  /** Calls `f` once the stream is gone. */
  onGone(f: () => void): void;
  /** Still writable (a goodbye can be sent). */
  isOpen(): boolean;
  /** Ends politely (end of input), then hard. */
  end(): void;
  destroy(): void;
  /** What the transport said about its end (the remote proxy's stderr), if anything. */
  said(): string;
}

/**
 * A reader without vscode-jsonrpc's "partial message" timer: for a frame cut short by the end of
 * its stream, that timer re-arms itself every 10 s forever (disposing the reader does not stop
 * it), which would keep a window's extension host, or a test run, from ever exiting. We do not
 * use its notice: the end of the stream is the transport's `onGone`.
 */
function quietReader<R extends { partialMessageTimeout: number }>(reader: R): R {
  reader.partialMessageTimeout = 0;
  return reader;
}

/**
 * A writer whose writes never reject. vscode-jsonrpc 8.2.1 sends a request from an `async`
 * Promise executor that rethrows a failed write, so every request written to a transport that
 * just died (EPIPE, a destroyed stream) became an unhandled rejection. A failed write means the
 * transport is gone, which `onGone` reports; the request is then rejected when the connection
 * is disposed, like any request still waiting for its answer.
 */
function settledWriter(writer: MessageWriter): MessageWriter {
  return {
    onError: writer.onError,
    onClose: writer.onClose,
    write: (msg) => writer.write(msg).catch(() => undefined),
    end: () => writer.end(),
    dispose: () => writer.dispose(),
  };
}

function socketTransport(socket: net.Socket): Transport {
  socket.on("error", () => undefined);
  return {
    reader: quietReader(new SocketMessageReader(socket)),
    writer: settledWriter(new SocketMessageWriter(socket)),
    onGone: (f) => socket.on("close", f),
    isOpen: () => socket.readyState === "open",
    end: () => socket.end(),
    destroy: () => socket.destroy(),
    said: () => "",
  };
}

/** How long, after the process exited, the rest of its stderr may take to arrive. */
const STDERR_GRACE_MS = 1000;

function processTransport(child: ChildProcess, stderr: () => string): Transport {
  let gone = false;
  // "exit" can come before the last of stderr is read (or even written: a child of ssh may hold
  // stderr open), and what it said explains the end. So the end is announced at the end of
  // stderr, waiting at most a moment after the exit for it.
  const ended = new Promise<void>((resolve) => {
    child.on("exit", () => {
      gone = true;
      const err = child.stderr!;
      if (err.readableEnded || err.destroyed) {
        return resolve();
      }
      err.once("end", () => resolve());
      err.once("close", () => resolve());
      setTimeout(resolve, STDERR_GRACE_MS).unref();
    });
  });
  child.stdin!.on("error", () => undefined);
  return {
    reader: quietReader(new StreamMessageReader(child.stdout!)),
    writer: settledWriter(new StreamMessageWriter(child.stdin!)),
    onGone: (f) => {
      void ended.then(f);
    },
    isOpen: () => !gone && child.stdin!.writable,
    end: () => child.stdin!.end(),
    destroy: () => {
      // Close our ends too: whatever holds the other ends (ssh) sees end-of-input.
      child.stdin!.destroy();
      child.stdout!.destroy();
      if (!gone) {
        child.kill("SIGKILL");
      }
    },
    said: stderr,
  };
}

export type ConnectionState = "connecting" | "connected" | "disconnected" | "closed";

/** What the client needs from whoever shows a followed session. */
export interface SessionFollower {
  /** One event, in seq order, never one at or below the cursor. */
  onEvent(ev: SessionUpdateParams): void;
  /**
   * The view must be rebuilt (first subscribe, or `resync`): read `session/messages`, take
   * `result.streaming` and `result.status`. Events after `result.seq` are applied afterwards.
   */
  rebuild(result: SessionSubscribeResult): Promise<void>;
}

interface Followed {
  follower: SessionFollower;
  epoch?: string;
  seq?: number;
  /** Non-null while a subscribe (and its rebuild) is in progress: events wait here. */
  buffer: SessionUpdateParams[] | null;
}

/** Answers a prompt: a decision, or a whole result (an `allowAlways` with its `scope`). */
export type PermissionHandler = (
  params: PermissionRequestParams,
  token: CancellationToken,
) => Promise<PermissionDecision | PermissionRequestResult>;

/** A connection given up because the settings moved the client to another daemon meanwhile. */
export class SupersededError extends Error {
  constructor() {
    super("the connection settings changed while connecting");
  }
}

/** Where the client connects: the settings that choose the daemon. */
export type Target = Pick<ClientOptions, "socketPath" | "crushctlPath" | "remote">;

/**
 * Events: `state` (ConnectionState), `sessionUpdate` (SessionUpdateParams, after the cursor
 * filter), `runComplete` (RunCompleteParams), `permissionResolved`, `permissionWithdrawn`
 * (requestId: a `$/cancelRequest` for a prompt), `daemonShutdown`, `resubscribed`
 * ({sessionId, result}), `initialized` (InitializeResult), `reconnectFailed` (Error: an attempt
 * of the background reconnect after a drop failed), `log` (string).
 */
export class CrushClient extends EventEmitter {
  private conn: MessageConnection | undefined;
  private transport: Transport | undefined;
  private followed = new Map<string, Followed>();
  private workspaces = new Set<string>();
  private permissionHandler: PermissionHandler | undefined;
  private starting: Promise<InitializeResult> | undefined;
  private disposed = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private reconnecting: Promise<void> | undefined;
  /** The daemon said it is going away: reconnect when next needed, not on a timer. */
  private shutdownNotice = false;
  /** Bumped by `retarget`: a connection begun for an earlier target is not used. */
  private generation = 0;
  state: ConnectionState = "disconnected";
  info: InitializeResult | undefined;

  constructor(readonly opts: ClientOptions) {
    super();
  }

  private log(line: string): void {
    this.opts.log?.(line);
    this.emit("log", line);
  }

  private setState(s: ConnectionState): void {
    if (this.state !== s) {
      this.state = s;
      this.emit("state", s);
    }
  }

  /** Connects (starting the daemon if needed) and initializes; resolves once ready. */
  start(): Promise<InitializeResult> {
    if (this.disposed) {
      return Promise.reject(new Error("the client was disposed"));
    }
    if (this.state === "connected" && this.info) {
      return Promise.resolve(this.info);
    }
    if (!this.starting) {
      // A failure after `retarget` is the old target's, which nobody wants any more.
      const generation = this.generation;
      const attempt = this.connectAndInit().catch((e: unknown) => {
        throw generation !== this.generation ? new SupersededError() : e;
      });
      // Cleared only if still current: `retarget` may have started another meanwhile.
      const starting: Promise<InitializeResult> = attempt.finally(() => {
        if (this.starting === starting) {
          this.starting = undefined;
        }
      });
      this.starting = starting;
    }
    return this.starting;
  }

  private async connectAndInit(): Promise<InitializeResult> {
    this.setState("connecting");
    const generation = this.generation;
    if (this.opts.remote) {
      let t: Transport;
      try {
        t = await this.spawnRemote(this.opts.remote);
      } catch (e) {
        this.setState("disconnected");
        throw e;
      }
      return this.initializeOver(t, generation);
    }
    let socket: net.Socket;
    try {
      socket = await this.connectSocket();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // A socket file left behind by a daemon that is gone refuses connections (ECONNREFUSED).
      if (!this.opts.crushctlPath || (code !== "ENOENT" && code !== "ECONNREFUSED")) {
        this.setState("disconnected");
        throw e;
      }
      this.log(`no daemon at ${this.opts.socketPath}; starting it with ${this.opts.crushctlPath}`);
      try {
        await this.startDaemon();
        socket = await this.connectSocket();
      } catch (e2) {
        // Whatever failed, we are not connecting any more: say so (status bar, view).
        this.setState("disconnected");
        throw e2;
      }
    }
    return this.initializeOver(socketTransport(socket), generation);
  }

  private async initializeOver(t: Transport, generation: number): Promise<InitializeResult> {
    if (generation !== this.generation) {
      // The settings changed while this connection was being made: it leads to the old daemon.
      t.destroy();
      throw new SupersededError();
    }
    try {
      return await this.initialize(t, generation);
    } catch (e) {
      t.destroy();
      if (this.state === "connecting") {
        this.setState("disconnected");
      }
      throw e;
    }
  }

  /**
   * `crushctl --remote HOST proxy`: ssh to the remote crushctl's proxy, which starts the remote
   * daemon when needed. Its stderr (ssh's words: unknown host, refused key) is kept to explain a
   * failure.
   */
  private spawnRemote(remote: RemoteOptions): Promise<Transport> {
    const crushctl = this.opts.crushctlPath || "crushctl";
    const args = ["--remote", remote.host];
    if (remote.crushctl) {
      args.push("--remote-crushctl", remote.crushctl);
    }
    args.push("proxy");
    this.log(`connecting to crushd on ${remote.host}: ${crushctl} ${args.join(" ")}`);
    return new Promise((resolve, reject) => {
      const child = spawn(crushctl, args, { env: this.opts.env ?? process.env, stdio: ["pipe", "pipe", "pipe"] });
      let stderr = "";
      child.stderr!.on("data", (d: Buffer) => {
        stderr = (stderr + d.toString()).slice(-4096);
        this.log(`[${remote.host}] ${d.toString().trimEnd()}`);
      });
      child.once("error", (err: NodeJS.ErrnoException) => {
        reject(new Error(remoteFailure(remote.host, crushctl, err.code === "ENOENT" ? "not found" : err.message, "")));
      });
      child.once("spawn", () => resolve(processTransport(child, () => stderr)));
    });
  }

  private connectSocket(): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(this.opts.socketPath);
      s.once("connect", () => {
        s.removeListener("error", reject);
        resolve(s);
      });
      s.once("error", reject);
    });
  }

  private startDaemon(): Promise<void> {
    return new Promise((resolve, reject) => {
      execFile(
        this.opts.crushctlPath!,
        ["--socket", this.opts.socketPath, "daemon", "start"],
        { env: this.opts.env ?? process.env, timeout: 30_000 },
        (err, stdout, stderr) => {
          if (err) {
            reject(new Error(startFailure(this.opts.crushctlPath!, err, String(stderr), String(stdout))));
          } else {
            resolve();
          }
        },
      );
    });
  }

  private async initialize(t: Transport, generation: number): Promise<InitializeResult> {
    const conn = createMessageConnection(t.reader, t.writer);
    this.transport = t;
    this.conn = conn;
    conn.onNotification("$/sessionUpdate", (p: SessionUpdateParams) => this.onSessionUpdate(p));
    conn.onNotification("$/runComplete", (p: RunCompleteParams) => this.emit("runComplete", p));
    conn.onNotification("$/permissionResolved", (p: PermissionResolvedParams) =>
      this.emit("permissionResolved", p),
    );
    conn.onNotification("$/daemonShutdown", (p: { reason: string }) => {
      this.shutdownNotice = true;
      this.emit("daemonShutdown", p);
    });
    conn.onRequest("permission/request", async (params: PermissionRequestParams, token: CancellationToken) => {
      // A copy withdrawn before vscode-jsonrpc dispatched it comes with a token that is already
      // cancelled and whose event never fires: check first.
      if (token.isCancellationRequested) {
        this.emit("permissionWithdrawn", params.requestId);
        throw new ResponseError(-32800, "withdrawn before it was shown");
      }
      token.onCancellationRequested(() => this.emit("permissionWithdrawn", params.requestId));
      if (!this.permissionHandler) {
        // No prompt to show: leave the request to the other clients (§7, answers).
        throw new ResponseError(-32601, "this client shows no permission prompts");
      }
      const answer = await this.permissionHandler(params, token);
      return typeof answer === "string" ? { decision: answer } : answer;
    });
    const onGone = () => this.onConnectionLost(conn);
    conn.onClose(onGone);
    conn.onError(() => undefined);
    // Before initialize is answered, the end of the transport is a failure to connect: say
    // what the transport said (ssh's words for a remote daemon).
    const ended = new Promise<never>((_, reject) =>
      t.onGone(() => {
        const remote = this.opts.remote;
        reject(
          new Error(
            remote
              ? remoteFailure(remote.host, this.opts.crushctlPath || "crushctl", "ended", t.said())
              : "the connection to crushd closed before it answered initialize",
          ),
        );
      }),
    );
    ended.catch(() => undefined);
    t.onGone(onGone);
    conn.listen();

    let info: InitializeResult;
    try {
      info = (await Promise.race([
        conn.sendRequest("initialize", {
          clientInfo: { name: this.opts.clientName ?? "vscode", version: this.opts.clientVersion },
          clientId: this.opts.clientId,
          protocolVersion: PROTOCOL_VERSION,
          // We keep our own cursors and subscribe with afterSeq ourselves.
          restoreSubscriptions: false,
        }),
        ended,
      ])) as InitializeResult;
    } catch (e) {
      // vscode-jsonrpc's own codes for a transport that failed under the request (never the
      // daemon's: its codes stop above -32095).
      const connectionGone =
        e instanceof ResponseError &&
        (
          [
            JsonRpcErrorCodes.MessageWriteError,
            JsonRpcErrorCodes.MessageReadError,
            JsonRpcErrorCodes.PendingResponseRejected,
            JsonRpcErrorCodes.ConnectionInactive,
          ] as number[]
        ).includes(e.code);
      if (e instanceof ResponseError && !connectionGone) {
        throw e; // the daemon's own answer
      }
      // The connection can notice the end (its input closed) before the transport has said why
      // (ssh's stderr, read to its end): give the transport's words the moment they need.
      throw await Promise.race([
        ended.catch((why: Error) => why),
        new Promise<unknown>((resolve) => setTimeout(() => resolve(e), STDERR_GRACE_MS + 100).unref()),
      ]);
    }
    if (generation !== this.generation) {
      t.destroy();
      throw new SupersededError();
    }
    if (info.protocolVersion !== PROTOCOL_VERSION) {
      t.destroy();
      throw new Error(
        `crushd speaks protocol version ${info.protocolVersion}, this extension ${PROTOCOL_VERSION}: stop the daemon (crushctl daemon stop) so a matching one starts`,
      );
    }
    await conn.sendNotification("initialized", {});
    this.info = info;
    this.attempt = 0;
    this.setState("connected");
    this.emit("initialized", info);
    return info;
  }

  private onConnectionLost(conn: MessageConnection): void {
    if (this.conn !== conn) {
      return;
    }
    this.conn = undefined;
    this.transport = undefined;
    // vscode-jsonrpc hands queued messages over asynchronously: let what arrived before the close
    // (a response, `$/daemonShutdown`) through before pending requests are failed.
    setTimeout(() => conn.dispose(), 100);
    if (this.disposed) {
      this.setState("closed");
      return;
    }
    this.setState("disconnected");
    if (!this.shutdownNotice) {
      this.scheduleReconnect();
    }
  }

  private scheduleReconnect(): void {
    if (this.disposed || this.reconnectTimer) {
      return;
    }
    const { initial, max } = this.opts.backoffMs ?? { initial: 100, max: 5_000 };
    const delay = Math.min(max, initial * 2 ** this.attempt);
    this.attempt += 1;
    this.log(`connection lost; reconnecting in ${delay} ms`);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      const generation = this.generation;
      this.reconnect().catch((e: Error) => {
        if (generation === this.generation && !this.disposed) {
          this.emit("reconnectFailed", e);
        }
      });
    }, delay);
  }

  private reconnect(): Promise<void> {
    if (!this.reconnecting) {
      const reconnecting: Promise<void> = this.doReconnect().finally(() => {
        if (this.reconnecting === reconnecting) {
          this.reconnecting = undefined;
        }
      });
      this.reconnecting = reconnecting;
    }
    return this.reconnecting;
  }

  private async doReconnect(): Promise<void> {
    try {
      await this.start();
      this.shutdownNotice = false;
      for (const path of this.workspaces) {
        await this.call("workspace/open", { path });
      }
      for (const sessionId of [...this.followed.keys()]) {
        await this.subscribe(sessionId);
      }
    } catch (e) {
      this.log(`reconnect failed: ${(e as Error).message}`);
      // Superseded: the settings moved the client, and what it follows now is the new daemon's.
      if (this.state !== "connected" && !(e instanceof SupersededError)) {
        this.scheduleReconnect();
      }
      throw e;
    }
  }

  /** A typed request; connects first if needed. */
  async request<M extends Method>(method: M, params: Params<M>): Promise<Result<M>> {
    if (!this.conn || this.state !== "connected") {
      // After a drop or a daemon shutdown: connect again (starting a daemon if needed), reopen
      // the workspaces and resubscribe before the request goes out.
      await this.reconnect();
    }
    return this.call(method, params);
  }

  /** A request on the current connection, without reconnecting. */
  private async call<M extends Method>(method: M, params: Params<M>): Promise<Result<M>> {
    if (!this.conn) {
      throw new Error("not connected to crushd");
    }
    return (await this.conn.sendRequest(method, params)) as Result<M>;
  }

  /** `workspace/open`, remembered so a reconnect opens it again (and so claims it again). */
  async openWorkspace(path: string): Promise<Result<"workspace/open">> {
    if (this.state !== "connected") {
      await this.reconnect();
    }
    this.workspaces.add(path);
    return this.call("workspace/open", { path });
  }

  setPermissionHandler(handler: PermissionHandler | undefined): void {
    this.permissionHandler = handler;
  }

  /** Follows a session: subscribes, and keeps following across reconnects. */
  async follow(sessionId: string, follower: SessionFollower): Promise<SessionSubscribeResult> {
    if (this.state !== "connected") {
      await this.reconnect();
    }
    const existing = this.followed.get(sessionId);
    this.followed.set(sessionId, { follower, buffer: null, epoch: existing?.epoch, seq: existing?.seq });
    return this.subscribe(sessionId);
  }

  async unfollow(sessionId: string): Promise<void> {
    if (!this.followed.delete(sessionId)) {
      return;
    }
    if (this.conn && this.state === "connected") {
      try {
        await this.call("session/unsubscribe", { sessionId });
      } catch {
        // Gone already, or the connection dropped: nothing to undo.
      }
    }
  }

  /** The cursor of a followed session (epoch and last applied seq). */
  cursor(sessionId: string): { epoch?: string; seq?: number } | undefined {
    const f = this.followed.get(sessionId);
    return f && { epoch: f.epoch, seq: f.seq };
  }

  private async subscribe(sessionId: string): Promise<SessionSubscribeResult> {
    const f = this.followed.get(sessionId);
    if (!f) {
      throw new Error(`session ${sessionId} is not followed`);
    }
    f.buffer = [];
    const haveView = f.seq !== undefined && f.epoch !== undefined;
    let result: SessionSubscribeResult;
    try {
      result = await this.call(
        "session/subscribe",
        haveView ? { sessionId, afterSeq: f.seq, epoch: f.epoch } : { sessionId },
      );
    } catch (e) {
      f.buffer = null;
      throw e;
    }
    if (!haveView || result.resync) {
      await f.follower.rebuild(result);
      f.epoch = result.epoch;
      f.seq = result.seq;
    } else {
      f.epoch = result.epoch;
    }
    const buffered = f.buffer ?? [];
    f.buffer = null;
    for (const ev of buffered) {
      this.apply(f, ev);
    }
    this.emit("resubscribed", { sessionId, result });
    return result;
  }

  private onSessionUpdate(ev: SessionUpdateParams): void {
    const f = this.followed.get(ev.sessionId);
    if (!f) {
      return;
    }
    if (f.buffer) {
      f.buffer.push(ev);
      return;
    }
    this.apply(f, ev);
  }

  private apply(f: Followed, ev: SessionUpdateParams): void {
    if (f.seq !== undefined && ev.seq <= f.seq) {
      return;
    }
    f.seq = ev.seq;
    f.follower.onEvent(ev);
    this.emit("sessionUpdate", ev);
  }

  /** Reconnects at once instead of waiting for the backoff (the "Reconnect" action, tests). */
  reconnectNow(): Promise<void> {
    if (this.reconnectTimer) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = undefined;
    }
    return this.reconnect();
  }

  /** Drops the connection without a goodbye, as a crash or a network hiccup would (tests, "reconnect"). */
  dropConnection(): void {
    this.transport?.destroy();
  }

  /** Ends for good: `shutdown` + `exit`, so the daemon releases our claims at once (§5.3). */
  async dispose(): Promise<void> {
    this.disposed = true;
    await this.close();
    this.setState("closed");
  }

  /**
   * Moves to another daemon (the settings that choose it changed): the current connection ends
   * politely, as at `dispose`, so the old daemon releases our claims at once; the workspaces and
   * sessions followed there are forgotten (they are that daemon's); the next request connects
   * to `target`. The `clientId` stays: it names this window, whichever daemon it talks to.
   */
  async retarget(target: Target): Promise<void> {
    this.generation += 1;
    this.starting = undefined;
    this.reconnecting = undefined;
    this.followed.clear();
    this.workspaces.clear();
    this.shutdownNotice = false;
    this.attempt = 0;
    this.info = undefined;
    // Before anything is awaited: a request made meanwhile goes to the new daemon.
    this.opts.socketPath = target.socketPath;
    this.opts.crushctlPath = target.crushctlPath;
    this.opts.remote = target.remote;
    const wasConnected = this.state === "connected";
    await this.close(wasConnected);
    this.setState("disconnected");
  }

  /** Closes the connection (if any) with `shutdown` + `exit` when `polite`, and stops reconnecting. */
  private async close(polite = this.state === "connected"): Promise<void> {
    if (this.reconnectTimer) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = undefined;
    }
    const conn = this.conn;
    const transport = this.transport;
    // Detached first: its end is not a drop to reconnect from.
    this.conn = undefined;
    this.transport = undefined;
    if (conn && polite && !this.shutdownNotice && transport?.isOpen()) {
      try {
        await conn.sendRequest("shutdown", {});
        await conn.sendNotification("exit", {});
      } catch {
        // Already gone.
      }
    }
    transport?.end();
    transport?.destroy();
    conn?.dispose();
  }
}

/**
 * Why `crushctl daemon start` failed, in words a user can act on: a missing executable names
 * the setting to fix; otherwise crushctl's own message (never an empty tail).
 */
export function startFailure(
  crushctl: string,
  err: Error & { code?: string | number | null; killed?: boolean },
  stderr: string,
  stdout: string,
): string {
  const hint = "set crush.crushctlPath to the crushctl executable (or start the daemon yourself with `crushctl daemon start`)";
  if (err.code === "ENOENT") {
    return `could not start crushd: \`${crushctl}\` was not found; ${hint}`;
  }
  if (err.code === "EACCES") {
    return `could not start crushd: \`${crushctl}\` is not executable; ${hint}`;
  }
  const said = (stderr.trim() || stdout.trim()).split("\n").slice(-5).join("\n");
  const how = err.killed ? "timed out" : typeof err.code === "number" ? `exited with status ${err.code}` : err.message.trim();
  return `could not start crushd: \`${crushctl} daemon start\` ${how}${said ? `: ${said}` : ""}`;
}

/**
 * Why the remote daemon could not be reached: what ssh or the remote crushctl said (its last
 * lines), or that crushctl itself is missing, naming the settings to fix.
 */
export function remoteFailure(host: string, crushctl: string, how: string, stderr: string): string {
  if (how === "not found") {
    return `cannot reach crushd on ${host}: \`${crushctl}\` was not found; set crush.crushctlPath to the local crushctl executable`;
  }
  const said = stderr
    .trim()
    .split("\n")
    .map((l) => l.replace(/^crushctl: /, "").replace(/^cannot reach crushd on \S+ over SSH: /, ""))
    .slice(-5)
    .join("\n");
  return `cannot reach crushd on ${host} over SSH: ${said || `\`${crushctl} --remote ${host} proxy\` ${how}`}`;
}

/** The JSON-RPC error code of a failed request, if it has one. */
export function errorCode(e: unknown): number | undefined {
  return e instanceof ResponseError ? e.code : undefined;
}
