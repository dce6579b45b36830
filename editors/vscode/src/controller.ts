// The extension's state and behaviour behind the chat view, the commands and the status bar:
// which workspace and session the window shows, the session's model, permission prompts (in the
// view, or as a notification when the view is hidden, withdrawn when another client answers
// first), and the messages exchanged with the webview. The webview only ever talks to this
// class through `handleMessage` and `postState`.
import * as vscode from "vscode";
import { randomUUID } from "node:crypto";
import type { CancellationToken } from "vscode-jsonrpc/node";
import { CrushClient, errorCode, ErrorCodes } from "./client";
import { SessionModel, SessionState } from "./sessionModel";
import type {
  Attachment,
  ModelInfo,
  PermissionDecision,
  PermissionRequestParams,
  PermissionResolvedParams,
  SessionInfo,
  SendMode,
} from "./protocol.generated";

/** Messages the webview sends. */
export type FromWebview =
  | { type: "ready" }
  | { type: "send"; text: string; mode: SendMode }
  | { type: "cancel" }
  | { type: "newSession" }
  | { type: "selectSession"; sessionId: string }
  | { type: "setModel"; model: string }
  | { type: "permission"; requestId: string; decision: "allow" | "allowSession" | "deny" };

/** What the webview renders: sent whole on every change. */
export interface ViewState {
  connection: string;
  workspace?: string;
  sessions: Array<{ sessionId: string; title: string; busy: boolean }>;
  sessionId?: string;
  model?: string;
  models: Array<{ name: string; unavailable?: string }>;
  state: SessionState;
  items: SessionModel["items"];
  prompts: PermissionRequestParams[];
  error?: string;
}

export interface Settings {
  socketPath: string;
  crushctlPath: string;
  defaultModel: string;
  yolo: boolean;
}

interface PendingPrompt {
  params: PermissionRequestParams;
  resolve: (d: PermissionDecision) => void;
  reject: (e: Error) => void;
}

export class Controller implements vscode.Disposable {
  workspaceId: string | undefined;
  workspacePath: string | undefined;
  sessions: SessionInfo[] = [];
  models: ModelInfo[] = [];
  model: SessionModel | undefined;
  sessionInfo: SessionInfo | undefined;
  view: vscode.WebviewView | undefined;
  lastError: string | undefined;
  private pending = new Map<string, PendingPrompt>();
  private disposables: vscode.Disposable[] = [];
  private postScheduled = false;

  constructor(
    readonly client: CrushClient,
    readonly statusBar: vscode.StatusBarItem,
    readonly settings: () => Settings,
    readonly output: vscode.OutputChannel,
  ) {
    client.setPermissionHandler((p, token) => this.askPermission(p, token));
    const onResolved = (p: PermissionResolvedParams) => this.withdraw(p.requestId, `${p.decision} by ${p.by}`);
    const onWithdrawn = (requestId: string) => this.withdraw(requestId, "withdrawn");
    const onState = () => this.refresh();
    client.on("permissionResolved", onResolved);
    client.on("permissionWithdrawn", onWithdrawn);
    client.on("state", onState);
    this.disposables.push({
      dispose: () => {
        client.off("permissionResolved", onResolved);
        client.off("permissionWithdrawn", onWithdrawn);
        client.off("state", onState);
      },
    });
    this.refresh();
  }

  dispose(): void {
    this.disposables.forEach((d) => d.dispose());
    for (const p of this.pending.values()) {
      p.reject(new Error("the extension is shutting down"));
    }
    this.pending.clear();
  }

  /** Connects, opens the window's workspace folder and loads sessions and models. */
  async connect(): Promise<void> {
    await this.client.start();
    const folder = vscode.workspace.workspaceFolders?.[0];
    if (folder && folder.uri.scheme === "file") {
      const ws = await this.client.openWorkspace(folder.uri.fsPath);
      this.workspaceId = ws.workspaceId;
      this.workspacePath = ws.path;
    }
    await Promise.all([this.loadSessions(), this.loadModels()]);
    this.refresh();
  }

  async loadSessions(): Promise<void> {
    if (!this.workspaceId) {
      this.sessions = [];
      return;
    }
    const r = await this.client.request("session/list", { workspaceId: this.workspaceId });
    this.sessions = r.sessions;
  }

  async loadModels(): Promise<void> {
    const r = await this.client.request("model/list", {});
    this.models = r.models;
  }

  private async requireWorkspace(): Promise<string> {
    if (!this.workspaceId) {
      await this.connect();
    }
    if (!this.workspaceId) {
      throw new Error("Open a folder first: Crush sessions belong to a workspace folder.");
    }
    return this.workspaceId;
  }

  async newSession(title?: string): Promise<SessionInfo> {
    const workspaceId = await this.requireWorkspace();
    const s = this.settings();
    const info = await this.client.request("session/create", {
      workspaceId,
      title,
      model: s.defaultModel || undefined,
      yolo: s.yolo,
    });
    await this.loadSessions();
    await this.attach(info.sessionId);
    return info;
  }

  /** Shows (follows) a session in this window, shared with whichever other clients follow it. */
  async attach(sessionId: string): Promise<void> {
    if (this.model?.sessionId === sessionId) {
      return;
    }
    const previous = this.model;
    if (previous) {
      previous.removeAllListeners();
      await this.client.unfollow(previous.sessionId);
    }
    const model = new SessionModel(sessionId, this.client);
    this.model = model;
    model.on("changed", () => this.refresh());
    this.sessionInfo = await this.client.request("session/get", { sessionId });
    // Prompts that arrived before we showed the session.
    for (const p of this.pending.values()) {
      if (p.params.sessionId === sessionId) {
        model.addPrompt(p.params);
      }
    }
    await this.client.follow(sessionId, model);
    this.refresh();
  }

  async send(text: string, mode: SendMode = "queue", attachments: Attachment[] = []): Promise<string> {
    if (!this.model) {
      await this.newSession();
    }
    const sessionId = this.model!.sessionId;
    const r = await this.client.request("agent/send", {
      sessionId,
      prompt: text,
      attachments,
      runId: randomUUID(),
      mode,
      yolo: this.settings().yolo,
    });
    return r.runId;
  }

  async cancel(): Promise<string[]> {
    if (!this.model) {
      return [];
    }
    const r = await this.client.request("agent/cancel", { sessionId: this.model.sessionId });
    return r.cancelled;
  }

  async setModel(model: string): Promise<void> {
    if (!this.model) {
      return;
    }
    this.sessionInfo = await this.client.request("session/setModel", {
      sessionId: this.model.sessionId,
      model: model === "" ? null : model,
    });
    this.refresh();
  }

  /** The daemon asks: shown in the view and, when the view is hidden, as a notification. */
  askPermission(params: PermissionRequestParams, token: CancellationToken): Promise<PermissionDecision> {
    return new Promise<PermissionDecision>((resolve, reject) => {
      this.pending.set(params.requestId, { params, resolve, reject });
      token.onCancellationRequested(() => this.withdraw(params.requestId, "withdrawn"));
      if (this.model?.sessionId === params.sessionId) {
        this.model.addPrompt(params);
      }
      if (!this.view?.visible) {
        void this.notifyPermission(params);
      }
      this.refresh();
    });
  }

  private async notifyPermission(params: PermissionRequestParams): Promise<void> {
    const choice = await vscode.window.showWarningMessage(
      `Crush wants to ${params.title}`,
      { detail: params.diff ?? JSON.stringify(params.input, null, 2) },
      "Allow",
      "Allow for Session",
      "Deny",
    );
    const decision = choice === "Allow" ? "allow" : choice === "Allow for Session" ? "allowSession" : choice === "Deny" ? "deny" : undefined;
    if (decision) {
      this.answer(params.requestId, decision);
    }
  }

  /** The user chose; answers the daemon's request if it still waits. */
  answer(requestId: string, decision: "allow" | "allowSession" | "deny"): boolean {
    const p = this.pending.get(requestId);
    this.model?.removePrompt(requestId);
    if (!p) {
      // Known only from status.pendingPermissions (no request of ours): answer by id.
      void this.client.request("permission/respond", { requestId, decision }).catch((e) => {
        if (errorCode(e) !== ErrorCodes.PermissionResolved && errorCode(e) !== ErrorCodes.PermissionNotFound) {
          this.showError(e);
        }
      });
      this.refresh();
      return false;
    }
    this.pending.delete(requestId);
    p.resolve(decision);
    this.refresh();
    return true;
  }

  /** Another client answered, or the run was cancelled: take the prompt down. */
  withdraw(requestId: string, why: string): void {
    const p = this.pending.get(requestId);
    if (p) {
      this.pending.delete(requestId);
      p.reject(new Error(`permission request ${why}`));
    }
    this.model?.removePrompt(requestId);
    this.refresh();
  }

  pendingPrompts(): PermissionRequestParams[] {
    return [...this.pending.values()].map((p) => p.params);
  }

  get sessionState(): SessionState {
    if (this.pending.size > 0) {
      return "waitingForPermission";
    }
    return this.model?.state ?? "idle";
  }

  viewState(): ViewState {
    const prompts = new Map<string, PermissionRequestParams>();
    for (const p of this.model?.prompts.values() ?? []) {
      prompts.set(p.requestId, p);
    }
    for (const p of this.pendingPrompts()) {
      if (p.sessionId === this.model?.sessionId) {
        prompts.set(p.requestId, p);
      }
    }
    return {
      connection: this.client.state,
      workspace: this.workspacePath,
      sessions: this.sessions.map((s) => ({ sessionId: s.sessionId, title: s.title, busy: false })),
      sessionId: this.model?.sessionId,
      model: this.sessionInfo?.model ?? undefined,
      models: this.models.map((m) => ({ name: m.name, unavailable: m.unavailable ?? undefined })),
      state: this.sessionState,
      items: this.model?.items ?? [],
      prompts: [...prompts.values()],
      error: this.lastError,
    };
  }

  statusText(): string {
    if (this.client.state !== "connected") {
      return `$(debug-disconnect) Crush: ${this.client.state}`;
    }
    switch (this.sessionState) {
      case "running":
        return "$(sync~spin) Crush: running";
      case "queued":
        return "$(watch) Crush: queued";
      case "waitingForPermission":
        return "$(question) Crush: waiting for permission";
      default:
        return "$(comment-discussion) Crush: idle";
    }
  }

  /** Updates the status bar now and the webview once per turn of the event loop. */
  refresh(): void {
    this.statusBar.text = this.statusText();
    this.statusBar.tooltip = this.model ? `Crush session ${this.sessionInfo?.title ?? this.model.sessionId}` : "Crush";
    if (this.postScheduled) {
      return;
    }
    this.postScheduled = true;
    setImmediate(() => {
      this.postScheduled = false;
      this.postState();
    });
  }

  postState(): void {
    void this.view?.webview.postMessage({ type: "state", state: this.viewState() });
  }

  showError(e: unknown): void {
    const msg = e instanceof Error ? e.message : String(e);
    this.lastError = msg;
    this.output.appendLine(`error: ${msg}`);
    void vscode.window.showErrorMessage(`Crush: ${msg}`);
    this.refresh();
  }

  /** Everything the webview can ask for. Unknown or malformed messages are ignored. */
  async handleMessage(msg: FromWebview): Promise<void> {
    if (!msg || typeof msg !== "object") {
      return;
    }
    try {
      this.lastError = undefined;
      switch (msg.type) {
        case "ready":
          this.postState();
          break;
        case "send":
          if (typeof msg.text === "string" && msg.text.trim() !== "") {
            await this.send(msg.text, msg.mode === "steer" ? "steer" : "queue");
          }
          break;
        case "cancel":
          await this.cancel();
          break;
        case "newSession":
          await this.newSession();
          break;
        case "selectSession":
          if (typeof msg.sessionId === "string") {
            await this.attach(msg.sessionId);
          }
          break;
        case "setModel":
          if (typeof msg.model === "string") {
            await this.setModel(msg.model);
          }
          break;
        case "permission":
          if (["allow", "allowSession", "deny"].includes(msg.decision)) {
            this.answer(msg.requestId, msg.decision);
          }
          break;
        default:
          break;
      }
    } catch (e) {
      this.showError(e);
    }
  }
}
