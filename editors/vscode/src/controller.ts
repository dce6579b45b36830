// The extension's state and behaviour behind the chat view, the commands and the status bar:
// which workspace and session the window shows, the session's model, permission prompts (in the
// view, or as a notification when the view is hidden, withdrawn when another client answers
// first), and the messages exchanged with the webview. The webview only ever talks to this
// class through `handleMessage` and `postState`.
import * as vscode from "vscode";
import { randomUUID } from "node:crypto";
import type { CancellationToken } from "vscode-jsonrpc/node";
import { CrushClient, errorCode, ErrorCodes, SupersededError, Target } from "./client";
import { SessionModel, SessionState } from "./sessionModel";
import { proposedChange, finishedChange } from "./diffs";
import type {
  Attachment,
  ModelInfo,
  PermissionRequestParams,
  PermissionRequestResult,
  PermissionResolvedParams,
  PermissionRule,
  RuleScope,
  SessionCompactResult,
  SessionDiffResult,
  SessionInfo,
  SessionRevertResult,
  SendMode,
} from "./protocol.generated";

/** The answers a person gives to a prompt (`allowAlways` with a `scope`). */
export type Decision = "allow" | "allowSession" | "allowAlways" | "deny";
const DECISIONS: readonly string[] = ["allow", "allowSession", "allowAlways", "deny"];
const SCOPES: readonly string[] = ["session", "workspace", "global"];

/** How a scope reads in a prompt. */
export const SCOPE_TEXT: Record<RuleScope, string> = {
  session: "in this session",
  workspace: "in this workspace",
  global: "everywhere",
};

/** `bash "cargo test"`, `write "src/**"`, or the tool alone. */
export function ruleWhat(tool: string, pattern: string | null | undefined): string {
  return typeof pattern === "string" ? `${tool} "${pattern}"` : tool;
}

/** Messages the webview sends. */
export type FromWebview =
  | { type: "ready" }
  | { type: "send"; text: string; mode: SendMode }
  | { type: "cancel" }
  | { type: "newSession" }
  | { type: "selectSession"; sessionId: string }
  | { type: "setModel"; model: string }
  | { type: "permission"; requestId: string; decision: Decision; scope?: RuleScope }
  | { type: "openDiff"; requestId?: string; toolCallId?: string }
  | { type: "copyCode"; code: string }
  | { type: "insertCode"; code: string }
  | { type: "refreshSessions" }
  | { type: "openLink"; href: string };

/** One row of the session list. */
export interface SessionRow {
  sessionId: string;
  title: string;
  /** Unix ms of the last change (the daemon's `updatedAt`). */
  updatedAt: number;
  busy: boolean;
  model?: string;
  messageCount: number;
  tokens: number;
  cost: number | null;
}

/** What the webview renders: sent whole on every change. */
export interface ViewState {
  connection: string;
  workspace?: string;
  sessions: SessionRow[];
  /** Title, usage and cost of the shown session. */
  session?: SessionRow;
  sessionId?: string;
  model?: string;
  models: Array<{ name: string; unavailable?: string }>;
  state: SessionState;
  items: SessionModel["items"];
  prompts: PermissionRequestParams[];
  pending: SessionModel["pending"];
  error?: string;
}

/** Where a window remembers its session (the extension context's workspaceState). */
export interface Memento {
  get<T>(key: string): T | undefined;
  update(key: string, value: unknown): Thenable<void>;
}

export const SESSION_KEY = "crush.sessionId";

/** The key a session is remembered under: one per daemon, so switching back shows it again. */
export function sessionKey(remote: string | undefined): string {
  return remote ? `${SESSION_KEY}@${remote}` : SESSION_KEY;
}

/** Which daemon, in words: "crushd on HOST" or "this machine's crushd". */
export function daemonName(remote: string | undefined): string {
  return remote ? `crushd on ${remote}` : "this machine's crushd";
}

export interface Settings {
  socketPath: string;
  crushctlPath: string;
  /** `crush.remote`: the daemon's machine, over SSH ("" for this one). */
  remote: string;
  /** `crush.remoteWorkspace`: the project directory on that machine. */
  remoteWorkspace: string;
  /** `crush.remoteCrushctl`: crushctl there, when not on its PATH. */
  remoteCrushctl: string;
  defaultModel: string;
  yolo: boolean;
}

interface PendingPrompt {
  params: PermissionRequestParams;
  resolve: (d: PermissionRequestResult) => void;
  reject: (e: Error) => void;
  /**
   * The daemon's request was answered `deferred` (to answer with `permission/respond`, whose
   * errors come back to us): the prompt stays until `$/permissionResolved` or our own answer.
   */
  deferred?: boolean;
  /** The quick pick shown while the chat view is hidden; disposed when the prompt goes. */
  pick?: vscode.QuickPick<vscode.QuickPickItem & { decision?: string }>;
}

/** What this window sent, by runId: its prompt's attachments, and steers not yet folded in. */
interface Sent {
  text: string;
  attachments: string[];
  mode: SendMode;
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
  private sent = new Map<string, Sent>();
  private busy = new Map<string, boolean>();
  private disposables: vscode.Disposable[] = [];
  private postScheduled = false;
  /** The connection failure last shown, so that background reconnects failing alike are not. */
  private failureShown: string | undefined;
  /** Counts moves to another daemon: a move overtaken by a later one stops where it is. */
  private moves = 0;

  constructor(
    readonly client: CrushClient,
    readonly statusBar: vscode.StatusBarItem,
    readonly settings: () => Settings,
    readonly output: vscode.OutputChannel,
    readonly memento?: Memento,
  ) {
    client.setPermissionHandler((p, token) => this.askPermission(p, token));
    const onResolved = (p: PermissionResolvedParams) => this.withdraw(p.requestId, `${p.decision} by ${p.by}`);
    const onWithdrawn = (requestId: string) => this.withdraw(requestId, "withdrawn");
    const onState = (s: string) => {
      if (s === "connected") {
        this.failureShown = undefined;
      }
      this.refresh();
    };
    // A reconnect after a drop failed (ssh's words for a remote daemon): shown once per
    // failure, not at every attempt of the backoff.
    const onReconnectFailed = (e: Error) => {
      if (e.message !== this.failureShown) {
        this.failureShown = e.message;
        this.showError(e);
      }
    };
    client.on("reconnectFailed", onReconnectFailed);
    const onComplete = (p: { sessionId: string }) => {
      this.busy.set(p.sessionId, false);
      void this.reloadSessionInfo(p.sessionId).catch(() => undefined);
    };
    client.on("runComplete", onComplete);
    client.on("permissionResolved", onResolved);
    client.on("permissionWithdrawn", onWithdrawn);
    client.on("state", onState);
    this.disposables.push({
      dispose: () => {
        client.off("permissionResolved", onResolved);
        client.off("permissionWithdrawn", onWithdrawn);
        client.off("state", onState);
        client.off("runComplete", onComplete);
        client.off("reconnectFailed", onReconnectFailed);
      },
    });
    this.refresh();
  }

  dispose(): void {
    this.disposables.forEach((d) => d.dispose());
    for (const p of this.pending.values()) {
      p.pick?.dispose();
      p.reject(new Error("the extension is shutting down"));
    }
    this.pending.clear();
  }

  /** Connects, opens the window's workspace folder and loads sessions and models. */
  async connect(): Promise<void> {
    await this.client.start();
    const folder = vscode.workspace.workspaceFolders?.[0];
    // With a remote daemon the workspace is a directory over there, never this window's folder.
    const remote = this.client.opts.remote;
    if (remote && !this.settings().remoteWorkspace) {
      throw new Error(`crush.remote is ${remote.host}: set crush.remoteWorkspace to the project directory there`);
    }
    const where = remote ? this.settings().remoteWorkspace : folder?.uri.scheme === "file" ? folder.uri.fsPath : undefined;
    if (where) {
      const ws = await this.client.openWorkspace(where);
      this.workspaceId = ws.workspaceId;
      this.workspacePath = ws.path;
    }
    await Promise.all([this.loadSessions(), this.loadModels()]);
    // A reload (or a restart of VS Code) shows the session this workspace showed last.
    const remembered = this.memento?.get<string>(sessionKey(remote?.host));
    const known = !!remembered && this.sessions.some((s) => s.sessionId === remembered);
    this.output.appendLine(
      `workspace ${this.workspacePath ?? "(none)"}: ${this.sessions.length} session(s); remembered session: ${remembered ?? "none"}${remembered && !known ? " (no longer in the folder)" : ""}`,
    );
    if (!this.model && remembered && known) {
      await this.attach(remembered);
    }
    this.refresh();
  }

  async loadSessions(): Promise<void> {
    if (!this.workspaceId) {
      this.sessions = [];
      return;
    }
    const r = await this.client.request("session/list", { workspaceId: this.workspaceId });
    this.sessions = [...r.sessions].sort((a, b) => b.updatedAt - a.updatedAt);
    // The busy mark: the daemon has no list-wide status, so ask for the most recent sessions'.
    await Promise.all(
      this.sessions.slice(0, 20).map(async (s) => {
        try {
          const st = await this.client.request("agent/status", { sessionId: s.sessionId });
          this.busy.set(s.sessionId, st.state !== "idle");
        } catch {
          // Deleted meanwhile: the next list drops it.
        }
      }),
    );
  }

  /** Title, model, usage and last activity of one session, after a run or a change elsewhere. */
  async reloadSessionInfo(sessionId: string): Promise<void> {
    const info = await this.client.request("session/get", { sessionId });
    this.applySessionInfo(info);
  }

  applySessionInfo(info: SessionInfo): void {
    const i = this.sessions.findIndex((s) => s.sessionId === info.sessionId);
    if (i >= 0) {
      this.sessions[i] = info;
    } else if (info.workspaceId === this.workspaceId) {
      this.sessions.unshift(info);
    }
    this.sessions.sort((a, b) => b.updatedAt - a.updatedAt);
    if (this.model?.sessionId === info.sessionId) {
      this.sessionInfo = info;
    }
    this.refresh();
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
    model.sentByUs = (runId) => this.sent.get(runId);
    this.model = model;
    model.on("changed", () => {
      this.busy.set(sessionId, model.state !== "idle");
      this.refresh();
    });
    // The daemon's `sessionUpdated` event (title, model, usage changed by any client).
    model.on("sessionInfo", (info: SessionInfo) => this.applySessionInfo(info));
    model.on("runFinished", () => void this.reloadSessionInfo(sessionId).catch(() => undefined));
    this.sessionInfo = await this.client.request("session/get", { sessionId });
    this.output.appendLine(`showing session ${sessionId}`);
    void this.memento?.update(sessionKey(this.client.opts.remote?.host), sessionId);
    // Prompts that arrived before we showed the session.
    for (const p of this.pending.values()) {
      if (p.params.sessionId === sessionId) {
        model.addPrompt(p.params);
      }
    }
    await this.client.follow(sessionId, model);
    this.refresh();
  }

  /**
   * The settings that choose the daemon (or the remote workspace) changed: leave the current
   * daemon cleanly and show the new one. A session lives in one daemon, so what this window
   * showed goes: the shown session, the list, the models and the prompts waiting for an answer
   * here (the old daemon asks its other clients, or waits). The chat then follows the new
   * daemon: its sessions of the workspace, and the session last shown with it. Runs keep
   * running where they are.
   */
  async retarget(target: Target): Promise<void> {
    const move = ++this.moves;
    const before = daemonName(this.client.opts.remote?.host);
    this.model?.removeAllListeners();
    this.model = undefined;
    this.sessionInfo = undefined;
    this.sessions = [];
    this.models = [];
    this.workspaceId = undefined;
    this.workspacePath = undefined;
    this.busy.clear();
    this.sent.clear();
    for (const [id, p] of [...this.pending]) {
      this.pending.delete(id);
      p.pick?.dispose();
      p.reject(new Error("this window moved to another daemon"));
    }
    this.lastError = undefined;
    this.failureShown = undefined;
    const after = daemonName(target.remote?.host);
    this.output.appendLine(`the settings changed: leaving ${before}, connecting to ${after}`);
    await this.client.retarget(target);
    this.refresh();
    try {
      await this.connect();
    } catch (e) {
      if (move === this.moves) {
        throw e;
      }
    }
    if (move !== this.moves) {
      return;
    }
    const where = this.workspacePath ? ` (workspace ${this.workspacePath})` : "";
    void vscode.window.showInformationMessage(
      before === after
        ? `Crush: now showing the sessions of ${after}${where}.`
        : `Crush: now using ${after}${where}. The chat shows its sessions; those of ${before} are still there — change the setting back to see them.`,
    );
  }

  async send(text: string, mode: SendMode = "queue", attachments: Attachment[] = []): Promise<string> {
    if (!this.model) {
      await this.newSession();
    }
    const sessionId = this.model!.sessionId;
    const runId = randomUUID();
    // Known before the answer: the run's events may overtake it.
    this.sent.set(runId, { text, mode, attachments: attachments.map((a) => a.name ?? "attachment") });
    try {
      const r = await this.client.request("agent/send", {
        sessionId,
        prompt: text,
        attachments,
        runId,
        mode,
        yolo: this.settings().yolo,
      });
      return r.runId;
    } catch (e) {
      this.sent.delete(runId);
      throw e;
    }
  }

  private requireSession(): string {
    if (!this.model) {
      throw new Error("No session is shown: open the Crush chat and pick or start one.");
    }
    return this.model.sessionId;
  }

  /** `session/compact`: the model summarises the session's older messages now. */
  async compact(): Promise<SessionCompactResult> {
    return this.client.request("session/compact", { sessionId: this.requireSession() });
  }

  /** `session/revert` from the session's last prompt that is not undone yet. */
  async undo(force = false): Promise<SessionRevertResult> {
    const sessionId = this.requireSession();
    const last = [...(this.model?.items ?? [])]
      .reverse()
      .find((i) => i.kind === "user" && !i.reverted);
    if (!last || last.kind !== "user") {
      throw new Error("Nothing to undo in this session.");
    }
    return this.client.request("session/revert", { sessionId, messageId: last.messageId, force });
  }

  /** `session/unrevert`: takes the last undo back while no prompt was sent since. */
  async redo(force = false): Promise<SessionRevertResult> {
    return this.client.request("session/unrevert", { sessionId: this.requireSession(), force });
  }

  /** `session/diff` of the whole session. */
  async diff(): Promise<SessionDiffResult> {
    return this.client.request("session/diff", { sessionId: this.requireSession() });
  }

  /** `session/fork` of the whole session; the copy is shown. */
  async fork(): Promise<SessionInfo> {
    const info = await this.client.request("session/fork", { sessionId: this.requireSession() });
    await this.loadSessions();
    await this.attach(info.sessionId);
    return info;
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
    const info = await this.client.request("session/setModel", {
      sessionId: this.model.sessionId,
      model: model === "" ? null : model,
    });
    this.applySessionInfo(info);
  }

  /** The daemon asks: shown in the view and, when the view is hidden, as a notification. */
  askPermission(params: PermissionRequestParams, token: CancellationToken): Promise<PermissionRequestResult> {
    return new Promise<PermissionRequestResult>((resolve, reject) => {
      this.pending.set(params.requestId, { params, resolve, reject });
      token.onCancellationRequested(() => this.withdraw(params.requestId, "withdrawn"));
      if (this.model?.sessionId === params.sessionId) {
        this.model.addPrompt(params);
      }
      if (!this.view?.visible) {
        this.notifyPermission(params);
      }
      this.refresh();
    });
  }

  /**
   * The prompt while the chat view is hidden: a quick pick that shows what is asked (the
   * command, or the file and its diff in VS Code's diff editor) and that this window takes down
   * as soon as the request is answered elsewhere or withdrawn. A notification could do neither:
   * VS Code shows `detail` only on modal messages, and a shown message cannot be dismissed.
   */
  private notifyPermission(params: PermissionRequestParams): void {
    const p = this.pending.get(params.requestId);
    if (!p) {
      return;
    }
    type Item = vscode.QuickPickItem & { decision?: string; scope?: RuleScope };
    const pick = vscode.window.createQuickPick<Item>();
    p.pick = pick;
    const editsFile = params.diff !== undefined && params.diff !== null;
    pick.title = `Crush wants to ${params.title}`;
    pick.placeholder = summarizeInput(params);
    pick.ignoreFocusOut = true;
    const items: Item[] = [
      { label: "$(check) Allow once", decision: "allow", detail: summarizeInput(params) },
      { label: "$(check-all) Allow for session", decision: "allowSession", description: `every ${params.tool} call of this session` },
    ];
    for (const scope of params.scopes ?? []) {
      items.push({
        label: `$(pass-filled) Always allow ${ruleWhat(params.tool, params.suggestedPattern)} ${SCOPE_TEXT[scope]}`,
        decision: "allowAlways",
        scope,
        description: "a rule kept by the daemon (Crush: Permission Rules); edit its pattern next",
      });
    }
    items.push({ label: "$(close) Deny", decision: "deny" });
    if (editsFile) {
      items.push({ label: "$(diff) Open diff", decision: "diff", description: "the proposed change in the diff editor" });
    }
    items.push({ label: "$(comment-discussion) Show in chat", decision: "chat" });
    pick.items = items;
    pick.onDidAccept(() => {
      const choice = pick.selectedItems[0]?.decision;
      if (choice === "diff") {
        void this.openDiff({ requestId: params.requestId }).catch((e) => this.showError(e));
      } else if (choice === "chat") {
        pick.hide();
        void vscode.commands.executeCommand("crush.chat.focus");
      } else if (choice && DECISIONS.includes(choice)) {
        this.answer(params.requestId, choice as Decision, pick.selectedItems[0]?.scope);
      }
    });
    pick.onDidHide(() => {
      if (p.pick === pick) {
        p.pick = undefined;
      }
      pick.dispose();
    });
    pick.show();
  }

  /** Opens a proposed edit (a pending prompt) or a finished one (a tool call) in the diff editor. */
  async openDiff(what: { requestId?: string; toolCallId?: string }): Promise<void> {
    const root = this.workspacePath;
    if (!root) {
      throw new Error("no workspace folder is open");
    }
    if (what.requestId) {
      const params =
        this.pending.get(what.requestId)?.params ?? this.model?.prompts.get(what.requestId);
      if (!params?.diff) {
        throw new Error("this prompt has no proposed change to show");
      }
      const change = proposedChange(root, params.diff);
      await showDiff(change, `${change.relPath} (proposed by Crush)`);
      return;
    }
    const tool = this.model?.items.find((i) => i.kind === "tool" && i.toolCallId === what.toolCallId);
    if (!tool || tool.kind !== "tool" || !tool.diff) {
      throw new Error("this tool call changed no file");
    }
    const change = finishedChange(root, tool.diff);
    await showDiff(change, `${change.relPath} (edited by Crush)`);
  }

  /**
   * The user chose; answers the daemon's request if it still waits. "Always allow" for a tool
   * whose rule has a pattern asks for the pattern first (`askRule`).
   */
  answer(requestId: string, decision: Decision, scope?: RuleScope): void {
    if (decision === "allowAlways") {
      const params = this.promptParams(requestId);
      if (!scope || !params) {
        return;
      }
      if (typeof params.suggestedPattern === "string") {
        void this.askRule(params, scope, params.suggestedPattern).catch((e) => this.showError(e));
        return;
      }
    }
    const result: PermissionRequestResult = decision === "allowAlways" ? { decision, scope } : { decision };
    const p = this.pending.get(requestId);
    if (p && !p.deferred) {
      this.pending.delete(requestId);
      this.model?.removePrompt(requestId);
      p.pick?.dispose();
      p.resolve(result);
      this.refresh();
      return;
    }
    // Known only from status.pendingPermissions, or deferred: answer by id.
    this.takeDown(requestId);
    void this.respond(requestId, result).catch((e) => this.showError(e));
  }

  /** The prompt's request, from the daemon's request or from the session's pending prompts. */
  private promptParams(requestId: string): PermissionRequestParams | undefined {
    return this.pending.get(requestId)?.params ?? this.model?.prompts.get(requestId);
  }

  private takeDown(requestId: string): void {
    const p = this.pending.get(requestId);
    this.pending.delete(requestId);
    p?.pick?.dispose();
    this.model?.removePrompt(requestId);
    this.refresh();
  }

  /**
   * `permission/respond`: resolves once answered, also when someone else was first or the
   * request is gone (nothing left to answer); throws the daemon's error otherwise (the request
   * is still pending then).
   */
  private async respond(requestId: string, result: PermissionRequestResult): Promise<void> {
    try {
      await this.client.request("permission/respond", { requestId, ...result });
    } catch (e) {
      const code = errorCode(e);
      if (code !== ErrorCodes.PermissionResolved && code !== ErrorCodes.PermissionNotFound) {
        throw e;
      }
    }
  }

  /**
   * "Always allow" in `scope`: an input box filled in with `value` (the daemon's suggestion, or
   * a pattern it refused, with its reason) lets the user edit the rule's pattern. Escape leaves
   * the prompt unanswered. The answer goes by `permission/respond` (the daemon's own request,
   * if we hold it, is answered `deferred` first): a refused pattern comes back as an error
   * there, while a refused answer to the daemon's request would only be logged by the daemon.
   */
  private async askRule(params: PermissionRequestParams, scope: RuleScope, value: string, refused?: string): Promise<void> {
    const requestId = params.requestId;
    // Only one quick input shows at a time: the quick pick goes (`reoffer` brings it back).
    const held = this.pending.get(requestId);
    if (held?.pick) {
      held.pick.dispose();
      held.pick = undefined;
    }
    const what =
      params.tool === "bash"
        ? "Commands that start with these words run without asking."
        : `A ${params.tool} of a file matching this glob (relative to the workspace) runs without asking.`;
    const pattern = await vscode.window.showInputBox({
      title: `Crush: always allow ${params.tool} ${SCOPE_TEXT[scope]}`,
      prompt: refused ? `Not saved: ${refused}. Edit the pattern, or press Escape to leave the prompt unanswered.` : what,
      value,
      ignoreFocusOut: true,
      validateInput: (v) =>
        v.trim() === ""
          ? "Give a pattern, or press Escape to leave the prompt unanswered."
          : refused && v === value
            ? refused
            : undefined,
    });
    if (!this.promptParams(requestId)) {
      return; // answered elsewhere or withdrawn meanwhile
    }
    if (pattern === undefined || pattern.trim() === "") {
      this.reoffer(requestId);
      return;
    }
    const p = this.pending.get(requestId);
    if (p && !p.deferred) {
      p.deferred = true;
      p.resolve({ decision: "deferred" });
    }
    try {
      await this.respond(requestId, { decision: "allowAlways", scope, pattern: pattern.trim() });
    } catch (e) {
      if (errorCode(e) !== ErrorCodes.InvalidParams) {
        throw e;
      }
      // The daemon's reason, e.g. `pattern: the command prefix "a; b" has shell syntax …`.
      const reason = (e as Error).message.replace(/^invalid params: /, "");
      this.output.appendLine(`rule not saved: ${reason}`);
      return this.askRule(params, scope, pattern.trim(), reason);
    }
    this.takeDown(requestId);
  }

  /** The rule was not saved and the prompt still waits: offer it again if the chat is hidden. */
  private reoffer(requestId: string): void {
    const p = this.pending.get(requestId);
    if (p && !p.pick && !this.view?.visible) {
      this.notifyPermission(p.params);
    }
    this.refresh();
  }

  /** The saved permission rules that apply in this window's workspace (`permission/rules/list`). */
  async permissionRules(): Promise<PermissionRule[]> {
    await this.connect();
    const workspaceId = this.workspaceId ?? undefined;
    return (await this.client.request("permission/rules/list", workspaceId ? { workspaceId } : {})).rules;
  }

  /** Deletes a saved rule: such calls are asked about again. */
  async removePermissionRule(id: string): Promise<void> {
    await this.client.request("permission/rules/remove", { id });
  }

  /** Another client answered, or the run was cancelled: take the prompt down. */
  withdraw(requestId: string, why: string): void {
    const p = this.pending.get(requestId);
    if (p) {
      this.pending.delete(requestId);
      p.pick?.dispose();
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
      sessions: this.sessions.map((s) => this.row(s)),
      session: this.sessionInfo ? this.row(this.sessionInfo) : undefined,
      sessionId: this.model?.sessionId,
      model: this.sessionInfo?.model ?? undefined,
      models: this.models.map((m) => ({ name: m.name, unavailable: m.unavailable ?? undefined })),
      state: this.sessionState,
      items: this.model?.items ?? [],
      prompts: [...prompts.values()],
      pending: this.model?.pending ?? [],
      error: this.lastError,
    };
  }

  private row(s: SessionInfo): SessionRow {
    const busy = this.model?.sessionId === s.sessionId ? this.sessionState !== "idle" : (this.busy.get(s.sessionId) ?? false);
    return {
      sessionId: s.sessionId,
      title: s.title,
      updatedAt: s.updatedAt,
      busy,
      model: s.model ?? undefined,
      messageCount: s.messageCount,
      tokens: s.usage ? s.usage.inputTokens + s.usage.outputTokens : s.promptTokens + s.completionTokens,
      // `null` when a price was unknown: the webview then shows no cost rather than a wrong one.
      cost: s.usage ? s.usage.cost : s.cost,
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
    if (e instanceof SupersededError) {
      // Not a failure: the settings moved the window elsewhere, and that move reports itself.
      return;
    }
    const msg = e instanceof Error ? e.message : String(e);
    this.lastError = msg;
    this.output.appendLine(`error: ${msg}`);
    this.refresh();
    if (/crush\.crushctlPath/.test(msg)) {
      void vscode.window.showErrorMessage(`Crush: ${msg}`, "Open Settings").then((c) => {
        if (c === "Open Settings") {
          void vscode.commands.executeCommand("workbench.action.openSettings", "crush.crushctlPath");
        }
      });
    } else {
      void vscode.window.showErrorMessage(`Crush: ${msg}`);
    }
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
          if (
            DECISIONS.includes(msg.decision) &&
            (msg.scope === undefined || SCOPES.includes(msg.scope))
          ) {
            this.answer(msg.requestId, msg.decision, msg.scope);
          }
          break;
        case "openDiff":
          await this.openDiff({
            requestId: typeof msg.requestId === "string" ? msg.requestId : undefined,
            toolCallId: typeof msg.toolCallId === "string" ? msg.toolCallId : undefined,
          });
          break;
        case "copyCode":
          if (typeof msg.code === "string") {
            await vscode.env.clipboard.writeText(msg.code);
            void vscode.window.setStatusBarMessage("Crush: code copied", 2000);
          }
          break;
        case "insertCode":
          if (typeof msg.code === "string") {
            await this.insertAtCursor(msg.code);
          }
          break;
        case "openLink":
          if (typeof msg.href === "string" && /^(https?|mailto):/i.test(msg.href)) {
            await vscode.env.openExternal(vscode.Uri.parse(msg.href));
          }
          break;
        case "refreshSessions":
          await this.loadSessions();
          this.refresh();
          break;
        default:
          break;
      }
    } catch (e) {
      this.showError(e);
    }
  }

  /** "Insert at cursor" on a code block: into the editor the user was last typing in. */
  async insertAtCursor(code: string): Promise<void> {
    const editor = vscode.window.activeTextEditor ?? vscode.window.visibleTextEditors[0];
    if (!editor) {
      throw new Error("No editor to insert into: open a file and put the cursor where the code should go.");
    }
    await editor.edit((b) => {
      for (const sel of editor.selections) {
        b.replace(sel, code);
      }
    });
  }
}

/** One line saying what a tool call would do. */
export function summarizeInput(p: PermissionRequestParams): string {
  const input = (p.input ?? {}) as Record<string, unknown>;
  if (typeof input.command === "string") {
    return `$ ${input.command}`;
  }
  if (typeof input.path === "string" || typeof input.file_path === "string") {
    return String(input.path ?? input.file_path);
  }
  return JSON.stringify(p.input);
}

/** Read-only documents for the left/right sides of a diff, by URI. */
export const diffContents = new Map<string, string>();
export const DIFF_SCHEME = "crush-diff";

async function showDiff(change: { relPath: string; before: string; after: string }, title: string): Promise<void> {
  const id = randomUUID();
  const left = vscode.Uri.from({ scheme: DIFF_SCHEME, path: `/${change.relPath}`, query: `${id}-before` });
  const right = vscode.Uri.from({ scheme: DIFF_SCHEME, path: `/${change.relPath}`, query: `${id}-after` });
  diffContents.set(left.toString(), change.before);
  diffContents.set(right.toString(), change.after);
  await vscode.commands.executeCommand("vscode.diff", left, right, title, { preview: true });
}
