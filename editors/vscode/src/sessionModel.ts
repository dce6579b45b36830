// The view of one session: its conversation (user prompts, assistant text, tool calls with
// their output), the runs in progress and waiting, and the permission prompts pending. Built from
// `session/messages` + the subscribe result's `streaming`/`status`, then kept current by
// `$/sessionUpdate` events (docs/protocol.md §7, recommended client algorithm). No `vscode` here.
import { EventEmitter } from "node:events";
import type {
  AgentStatusResult,
  MessageInfo,
  PermissionRequestParams,
  SessionSubscribeResult,
  SessionUpdateParams,
} from "./protocol.generated";
import type { CrushClient, SessionFollower } from "./client";

export interface UserItem {
  kind: "user";
  messageId: string;
  text: string;
  attachments: string[];
  /** Hidden from the model by an undo (`session/revert`): shown dimmed. */
  reverted?: boolean;
}
export interface AssistantItem {
  kind: "assistant";
  messageId: string;
  text: string;
  reasoning: string;
  finishReason?: string;
  error?: string;
  reverted?: boolean;
}
export interface ToolItem {
  kind: "tool";
  toolCallId: string;
  tool: string;
  input: unknown;
  status?: string;
  output?: string;
  diff?: string;
}
/** Where a summary of older messages stands (the model sees the summary instead of them). */
export interface NoteItem {
  kind: "note";
  id: string;
  text: string;
}
export type Item = UserItem | AssistantItem | ToolItem | NoteItem;

export function summaryNote(messages?: number): string {
  return messages !== undefined
    ? `${messages} older messages summarised to fit the context window`
    : "older messages summarised to fit the context window";
}

/** A prompt accepted but not yet in the conversation: a steer waiting for a step boundary, or a queued prompt. */
export interface PendingPrompt {
  runId: string;
  steer: boolean;
  /** Known when this window sent it; another client's prompt shows as a placeholder. */
  text?: string;
  attachments: string[];
}

export type SessionState = "idle" | "running" | "queued" | "waitingForPermission";

export interface Part {
  type: string;
  [k: string]: unknown;
}

function parseInput(input: unknown): unknown {
  if (typeof input !== "string") {
    return input;
  }
  try {
    return JSON.parse(input);
  } catch {
    return input;
  }
}

/** Emits `changed` after every update. */
export class SessionModel extends EventEmitter implements SessionFollower {
  items: Item[] = [];
  activeRunId: string | undefined;
  queued: string[] = [];
  waiting = new Set<string>();
  /** Permission prompts to show, by requestId. */
  prompts = new Map<string, PermissionRequestParams>();
  /** Steered and queued prompts not yet part of a turn, in arrival order. */
  pending: PendingPrompt[] = [];
  /** What this window sent, by runId (the daemon's events carry neither attachments nor a steer's text). */
  sentByUs: (runId: string) => { text: string; attachments: string[] } | undefined = () => undefined;

  constructor(
    readonly sessionId: string,
    private readonly client: Pick<CrushClient, "request">,
  ) {
    super();
  }

  get state(): SessionState {
    if (this.waiting.size > 0 || this.prompts.size > 0) {
      return "waitingForPermission";
    }
    if (this.activeRunId) {
      return "running";
    }
    return this.queued.length > 0 ? "queued" : "idle";
  }

  private changed(): void {
    this.emit("changed");
  }

  /** Reads the stored messages again (the session is idle: nothing streams). */
  async reload(): Promise<void> {
    const page = await this.client.request("session/messages", { sessionId: this.sessionId, limit: 200 });
    this.items = [];
    for (const m of page.messages) {
      this.addStored(m);
    }
    this.changed();
  }

  async rebuild(result: SessionSubscribeResult): Promise<void> {
    const page = await this.client.request("session/messages", { sessionId: this.sessionId, limit: 200 });
    this.items = [];
    for (const m of page.messages) {
      this.addStored(m);
    }
    if (result.streaming) {
      const s = result.streaming;
      this.items = this.items.filter((i) => !(i.kind === "assistant" && i.messageId === s.messageId));
      const stale = new Set(
        (s.parts as Part[]).filter((p) => p.type === "toolCall").map((p) => String(p.id)),
      );
      this.items = this.items.filter((i) => !(i.kind === "tool" && stale.has(i.toolCallId)));
      this.addParts(s.messageId, s.parts as Part[], undefined, undefined);
    }
    this.applyStatus(result.status);
    this.changed();
  }

  applyStatus(status: AgentStatusResult): void {
    this.activeRunId = status.activeRunId ?? undefined;
    this.queued = [...status.queued];
    this.pending = status.queued.map((runId) => {
      const ours = this.sentByUs(runId);
      return { runId, steer: false, text: ours?.text, attachments: ours?.attachments ?? [] };
    });
    this.waiting = new Set((status.pendingPermissions ?? []).map((p) => p.requestId));
    for (const p of status.pendingPermissions ?? []) {
      this.prompts.set(p.requestId, p);
    }
  }

  private addStored(m: MessageInfo): void {
    const parts = Array.isArray(m.parts) ? (m.parts as Part[]) : [];
    if (m.role === "user") {
      const text = parts.filter((p) => p.type === "text").map((p) => String(p.text)).join("");
      // Images are listed like attachments (by name); their data is not shown.
      const attachments = parts
        .filter((p) => p.type === "attachment" || p.type === "image")
        .map((p) => String(p.name ?? (p.type === "image" ? `image (${String(p.mimeType)})` : "attachment")));
      this.items.push({ kind: "user", messageId: m.messageId, text, attachments, reverted: m.reverted === true });
    } else if (m.role === "assistant") {
      this.addParts(m.messageId, parts, m.finishReason ?? undefined, m.error ?? undefined);
      const a = this.items.find((i) => i.kind === "assistant" && i.messageId === m.messageId);
      if (a && a.kind === "assistant" && m.reverted === true) {
        a.reverted = true;
      }
    } else if (m.role === "system") {
      for (const p of parts) {
        if (p.type === "summary") {
          this.items.push({ kind: "note", id: m.messageId, text: summaryNote(Number(p.messages)) });
        }
      }
    } else if (m.role === "tool") {
      for (const p of parts) {
        if (p.type === "toolResult") {
          this.finishTool(String(p.toolCallId), String(p.status ?? ""), String(p.content ?? ""), p.metadata);
        }
      }
    }
  }

  private addParts(messageId: string, parts: Part[], finishReason?: string, error?: string): void {
    const a: AssistantItem = { kind: "assistant", messageId, text: "", reasoning: "", finishReason, error };
    this.items.push(a);
    for (const p of parts) {
      if (p.type === "text") {
        a.text += String(p.text ?? "");
      } else if (p.type === "reasoning") {
        a.reasoning += String(p.reasoning ?? "");
      } else if (p.type === "toolCall") {
        this.items.push({ kind: "tool", toolCallId: String(p.id), tool: String(p.name), input: parseInput(p.input) });
      } else if (p.type === "toolResult") {
        this.finishTool(String(p.toolCallId), String(p.status ?? ""), String(p.content ?? ""), p.metadata);
      }
    }
  }

  private assistant(messageId: string): AssistantItem | undefined {
    for (let i = this.items.length - 1; i >= 0; i--) {
      const it = this.items[i];
      if (it.kind === "assistant" && it.messageId === messageId) {
        return it;
      }
    }
    return undefined;
  }

  private finishTool(toolCallId: string, status: string, output: string, metadata: unknown): void {
    const t = this.items.find((i): i is ToolItem => i.kind === "tool" && i.toolCallId === toolCallId);
    if (t) {
      t.status = status;
      t.output = output;
      const diff = (metadata as { diff?: unknown } | undefined)?.diff;
      t.diff = typeof diff === "string" ? diff : undefined;
    }
  }

  private dropPending(runId: string | null | undefined): void {
    this.pending = this.pending.filter((p) => p.runId !== runId);
  }

  onEvent(ev: SessionUpdateParams): void {
    // `sessionUpdated` (title or model changed) carries no usage: the session's info is read
    // again, as at the end of a run. A `session` member, if a daemon sends one, is used as is.
    const loose = ev as unknown as { kind: string; session?: unknown };
    if (loose.kind === "sessionUpdated") {
      if (loose.session && typeof loose.session === "object") {
        this.emit("sessionInfo", loose.session);
      } else {
        this.emit("runFinished");
      }
      return;
    }
    switch (ev.kind) {
      case "compacted":
        // A summary was written (an event without one only trimmed a request).
        if (ev.summaryMessageId && !this.items.some((i) => i.kind === "note" && i.id === ev.summaryMessageId)) {
          this.items.push({ kind: "note", id: ev.summaryMessageId, text: summaryNote() });
        }
        break;
      case "reverted":
      case "unreverted":
        // Messages were hidden from the model or shown again: read them again to mark them.
        void this.reload();
        return;
      case "userMessage":
        if (!this.items.some((i) => i.kind === "user" && i.messageId === ev.messageId)) {
          const ours = ev.runId ? this.sentByUs(ev.runId) : undefined;
          this.items.push({ kind: "user", messageId: ev.messageId, text: ev.text, attachments: ours?.attachments ?? [] });
        }
        this.dropPending(ev.runId);
        break;
      case "assistantStarted":
        if (!this.assistant(ev.messageId)) {
          this.items.push({ kind: "assistant", messageId: ev.messageId, text: "", reasoning: "" });
        }
        break;
      case "textDelta": {
        const a = this.assistant(ev.messageId);
        if (a) {
          a.text += ev.text;
        }
        break;
      }
      case "reasoningDelta": {
        const a = this.assistant(ev.messageId);
        if (a) {
          a.reasoning += ev.text;
        }
        break;
      }
      case "toolCallStarted":
        if (!this.items.some((i) => i.kind === "tool" && i.toolCallId === ev.toolCallId)) {
          this.items.push({ kind: "tool", toolCallId: ev.toolCallId, tool: ev.tool, input: ev.input });
        }
        break;
      case "toolCallFinished":
        this.finishTool(ev.toolCallId, ev.status, ev.output, ev.metadata);
        break;
      case "messageFinished": {
        const a = this.assistant(ev.messageId);
        if (a) {
          a.finishReason = ev.finishReason;
          a.error = ev.error ?? undefined;
        }
        break;
      }
      case "runQueued":
        if (ev.runId && !this.queued.includes(ev.runId)) {
          this.queued.push(ev.runId);
        }
        if (ev.runId && !this.pending.some((p) => p.runId === ev.runId)) {
          const ours = this.sentByUs(ev.runId);
          this.pending.push({ runId: ev.runId, steer: ev.steer, text: ours?.text, attachments: ours?.attachments ?? [] });
        }
        break;
      case "cancelRequested":
        this.pending = this.pending.filter((p) => !ev.runIds.includes(p.runId));
        break;
      case "runStarted":
        this.activeRunId = ev.runId ?? undefined;
        this.queued = this.queued.filter((r) => r !== ev.runId);
        break;
      case "runFolded":
        this.queued = this.queued.filter((r) => r !== ev.runId);
        break;
      case "runFinished":
        if (this.activeRunId === ev.runId) {
          this.activeRunId = undefined;
        }
        this.queued = this.queued.filter((r) => r !== ev.runId);
        this.dropPending(ev.runId);
        this.emit("runFinished", ev.runId);
        break;
      case "permissionRequested":
        this.waiting.add(ev.requestId);
        break;
      case "permissionResolved":
        this.waiting.delete(ev.requestId);
        this.prompts.delete(ev.requestId);
        break;
      default:
        // Kinds we do not know are ignored (§7, $/sessionUpdate).
        return;
    }
    this.changed();
  }

  addPrompt(p: PermissionRequestParams): void {
    this.prompts.set(p.requestId, p);
    this.changed();
  }

  removePrompt(requestId: string): void {
    if (this.prompts.delete(requestId)) {
      this.changed();
    }
  }
}
