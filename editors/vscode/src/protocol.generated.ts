// Generated from the Rust crate crush-protocol (protocol/src/ts.rs). Do not edit:
// regenerate with `CRUSH_UPDATE_TS=1 cargo test -p crush-tests --test editor_vscode`.
/* eslint-disable */

export const PROTOCOL_VERSION = 1;

export type JsonValue = number | string | boolean | Array<JsonValue> | { [key in string]: JsonValue } | null;

export type PermissionRequestParams = { requestId: string, sessionId: string, runId: string, toolCallId: string, tool: string, 
/**
 * One line for a person: `Edit src/main.rs`, `Run: cargo test`.
 */
title: string, 
/**
 * The tool's input as the model gave it.
 */
input: JsonValue, 
/**
 * For `edit` and `write`: the change as a unified diff.
 */
diff?: string | null, 
/**
 * The scopes an `allowAlways` answer may choose; empty when this prompt cannot be saved as
 * a rule (answer `allow`, `allowSession` or `deny`).
 */
scopes?: Array<RuleScope>, 
/**
 * The pattern an `allowAlways` answer saves unless it gives its own: for `bash` a command
 * prefix (whole words), for `write`/`edit` a path glob relative to the workspace; absent
 * when the rule covers every call of the tool (MCP tools).
 */
suggestedPattern?: string | null, 
/**
 * Present when the request asks to run a `bash` command again outside the sandbox,
 * because the sandbox refused it: what was refused.
 */
escalation?: SandboxEscalation | null, };

export type PermissionDecision = "allow" | "allowSession" | "allowAlways" | "deny" | "deferred";

export type PermissionRequestResult = { decision: PermissionDecision, 
/**
 * For `allowAlways`: where the rule applies (one of the request's `scopes`).
 */
scope?: RuleScope | null, 
/**
 * For `allowAlways`: the rule's pattern, instead of the request's `suggestedPattern`.
 */
pattern?: string | null, };

export type PermissionRespondParams = { requestId: string, decision: PermissionDecision, 
/**
 * For `allowAlways`: where the rule applies (one of the request's `scopes`).
 */
scope?: RuleScope | null, 
/**
 * For `allowAlways`: the rule's pattern, instead of the request's `suggestedPattern`.
 */
pattern?: string | null, };

export type PermissionRespondResult = Record<symbol, never>;

export type PermissionResolvedParams = { requestId: string, sessionId: string, runId: string, 
/**
 * `allow`, `allowSession`, `deny`, or `cancelled` (the run was cancelled first).
 */
decision: PermissionResolution, 
/**
 * The `clientInfo.name` of the client that answered (`"cancel"` when a cancel withdrew it).
 */
by: string, };

export type PermissionRule = { id: string, scope: RuleScope, 
/**
 * For `workspace` rules, and `session` rules (the session's workspace).
 */
workspaceId?: string | null, 
/**
 * For `session` rules.
 */
sessionId?: string | null, tool: string, 
/**
 * Absent: every call of the tool.
 */
pattern?: string | null, 
/**
 * Milliseconds since the Unix epoch.
 */
createdAt: number, 
/**
 * The `clientInfo.name` of the client whose answer saved it.
 */
createdBy: string, };

export type PermissionRulesListParams = { 
/**
 * Only the rules that apply in this workspace (its own and global ones).
 */
workspaceId?: string | null, 
/**
 * Only the rules that apply in this session (its own, its workspace's and global ones).
 */
sessionId?: string | null, };

export type PermissionRulesListResult = { 
/**
 * Oldest first.
 */
rules: Array<PermissionRule>, };

export type PermissionRulesRemoveParams = { id: string, };

export type PermissionRulesRemoveResult = Record<symbol, never>;

export type PermissionLogParams = { sessionId?: string | null, workspaceId?: string | null, 
/**
 * At most this many entries (default 100, at most 1000).
 */
limit?: number | null, };

export type PermissionLogResult = { 
/**
 * Newest first.
 */
entries: Array<PermissionLogEntry>, };

export type PermissionLogEntry = { 
/**
 * Milliseconds since the Unix epoch.
 */
at: number, sessionId: string, workspaceId: string, runId: string, toolCallId: string, tool: string, title: string, decision: PermissionResolution, source: PermissionSource, 
/**
 * What applied, for a person: the config rule, the saved rule's tool and pattern.
 */
rule?: string | null, 
/**
 * For `source: "rule"`, and for an `allowAlways` answer: the saved rule's id.
 */
ruleId?: string | null, 
/**
 * For `source: "prompt"`: the answering client's `clientInfo.name` (`"cancel"` when a
 * cancel withdrew the request).
 */
client?: string | null, 
/**
 * For `source: "prompt"`: the daemon's number of the answering connection.
 */
connection?: number | null, };

export type RuleScope = "session" | "workspace" | "global";

export type PermissionSource = "prompt" | "yolo" | "config" | "sessionGrant" | "rule" | "mcpAllow";

export type RunState = "accepted" | "queued" | "running" | "completed" | "cancelled" | "failed" | "interrupted";

export type RunStopReason = "maxSteps";

export type AgentState = "idle" | "active" | "waitingForPermission";

export type ToolStatus = "completed" | "failed" | "denied" | "cancelled";

export type FinishReason = "end_turn" | "max_tokens" | "tool_use" | "canceled" | "error" | "interrupted";

export type ContextWindowSource = "preset" | "config" | "default";

export type PermissionResolution = "allow" | "allowSession" | "allowAlways" | "deny" | "cancelled";

export type Part = { "type": "text", text: string, } | { "type": "reasoning", reasoning: string, 
/**
 * The provider's signature (Anthropic), sent back with the reasoning within a turn.
 */
signature?: string, } | { "type": "toolCall", id: string, name: string, 
/**
 * Stored: the model's arguments as JSON text (a string). Snapshot: parsed (a string if
 * it was not JSON).
 */
input: JsonValue, } | { "type": "toolResult", toolCallId: string, name: string, 
/**
 * What the model sees.
 */
content: string, status: ToolStatus, 
/**
 * Stored parts only.
 */
isError?: boolean, metadata?: JsonValue, } | { "type": "attachment", text: string, name?: string, mimeType?: string, } | { "type": "image", mimeType: string, data: string, name?: string, toolCallId?: string, } | { "type": "summary", text: string, fromMessageId: string, toMessageId: string, 
/**
 * How many stored messages it replaces.
 */
messages: number, };

export type SessionSetModelParams = { sessionId: string, 
/**
 * A model name from `model/list`, or `null` for the daemon's default.
 */
model: string | null, };

export type SessionSetYoloParams = { sessionId: string, yolo: boolean, };

export type SessionSetYoloResult = { yolo: boolean, };

export type SandboxMode = "workspace-write" | "read-only" | "off";

export type SandboxEscalation = { 
/**
 * The mode the command ran under.
 */
mode: SandboxMode, 
/**
 * What the sandbox refused, one line each for a person (`write /etc/hosts`,
 * `network connection`).
 */
refused: Array<string>, };

export type SandboxStatus = { 
/**
 * The mode asked for (the config's, or the session's own).
 */
mode: SandboxMode, 
/**
 * Whether commands may use TCP (`false`: connecting and binding are refused).
 */
network: boolean, 
/**
 * Whether the mode is enforced: `false` when it is `off`, or when this system cannot
 * confine commands (then `warning` says why and commands run unconfined).
 */
enforced: boolean, 
/**
 * The kernel's Landlock ABI version; absent without Landlock.
 */
landlockAbi?: number | null, 
/**
 * Directories commands may write, `<workspace>` standing for each session's root (empty
 * when nothing is confined or nothing is writable).
 */
writable: Array<string>, 
/**
 * Set when what is asked for is not (fully) enforced, saying why.
 */
warning?: string | null, };

export type SessionSetSandboxParams = { sessionId: string, 
/**
 * The session's mode; `null` (or absent) returns it to the config's.
 */
mode: SandboxMode | null, 
/**
 * Whether the session's commands may use TCP; `null` (or absent) returns it to the
 * config's.
 */
network: boolean | null, };

export type ConfigGetResult = { 
/**
 * The effective configuration: presets merged with the config file and the environment.
 * API keys never appear; `apiKeySet` says whether one is available.
 */
config: JsonValue, };

export type ClientInfo = { name: string, version?: string | null, };

export type InitializeParams = { clientInfo?: ClientInfo | null, 
/**
 * A stable id the client reuses across reconnects (a UUID is recommended).
 */
clientId?: string | null, 
/**
 * The protocol version the client speaks.
 */
protocolVersion?: number | null, 
/**
 * When this `clientId` dropped its connection less than the claim grace period ago:
 * subscribe this connection again to the sessions the old one followed, replaying from
 * the last event the daemon wrote to it. Default true. Clients that keep their own cursor
 * pass false and call `session/subscribe` with `afterSeq` themselves.
 */
restoreSubscriptions?: boolean | null, };

export type ServerInfo = { name: string, version: string, };

export type ServerCapabilities = { 
/**
 * Largest message body the daemon accepts, in bytes.
 */
maxMessageSize: number, 
/**
 * Whether `debug/*` methods are enabled on this daemon.
 */
debugMethods: boolean, };

export type InitializeResult = { serverInfo: ServerInfo, protocolVersion: number, capabilities: ServerCapabilities, pid: number, 
/**
 * The id this connection is known by: the client's `clientId`, or one the daemon made up.
 */
clientId: string, 
/**
 * This daemon process's stream epoch: event `seq` values are comparable only within one
 * epoch (a restarted daemon has a new one).
 */
epoch: string, 
/**
 * True when this `clientId` had claims or subscriptions kept from a dropped connection
 * (within the grace period); they now belong to this connection.
 */
resumed: boolean, 
/**
 * Subscriptions restored by `resumed` (see `restoreSubscriptions`), with where their
 * replay started.
 */
restored?: Array<RestoredSubscription>, };

export type RestoredSubscription = { sessionId: string, 
/**
 * Events after this seq were replayed (or `resync` is true and none were).
 */
afterSeq: number, resync: boolean, };

export type DaemonStatusResult = { pid: number, version: string, protocolVersion: number, uptimeMs: number, 
/**
 * Open connections, including the caller's.
 */
connections: number, 
/**
 * The socket (or pipe) the daemon listens on.
 */
socket: string, 
/**
 * The directory holding the daemon's log files.
 */
logDir: string, 
/**
 * Idle exit delay in milliseconds; 0 means never.
 */
idleTimeoutMs: number, 
/**
 * Bytes the workspace snapshots take on disk (`session/diff`, `session/revert`); absent
 * when snapshots are off.
 */
snapshotBytes?: number | null, 
/**
 * How `bash` commands are confined by default (the config's mode), with a warning when
 * this system cannot enforce it.
 */
sandbox?: SandboxStatus | null, };

export type DaemonShutdownParams = { 
/**
 * Shut down even while work is in progress.
 */
force: boolean, };

export type DaemonShutdownResult = { 
/**
 * Always true when the call succeeds: the daemon has begun to shut down.
 */
shuttingDown: boolean, };

export type DebugSleepParams = { ms: number, };

export type DebugSleepResult = { sleptMs: number, };

export type DebugStatsResult = { 
/**
 * Open connections, including the caller's.
 */
connections: number, 
/**
 * Requests being handled, over all connections (the caller's `debug/stats` included).
 */
inFlightRequests: number, 
/**
 * Runs active or queued.
 */
liveRuns: number, 
/**
 * Sessions with live state in memory.
 */
liveSessions: number, 
/**
 * Loaded workspaces.
 */
loadedWorkspaces: number, 
/**
 * Background tasks of the runtime (runs, flushers, tools), over all loaded workspaces.
 */
runtimeTasks: number, 
/**
 * Clients kept within their reconnect grace period.
 */
parkedClients: number, 
/**
 * Every task alive in the daemon's async runtime (connections, handlers, runs, timers).
 */
asyncTasks: number, 
/**
 * Bytes held by every session's replay log together (against `[daemon] replay_budget`).
 */
replayBytes: number, 
/**
 * Bytes of message bodies being received, every connection together (against
 * `[daemon] inbound_budget`).
 */
inboundBytes: number, };

export type DebugClientRequestParams = { method: string, params: JsonValue, 
/**
 * How long to wait for the client's answer; default 10 000.
 */
timeoutMs?: number | null, };

export type WorkspaceOpenParams = { 
/**
 * A directory; relative paths are refused, symlinks are resolved.
 */
path: string, };

export type WorkspaceInfo = { workspaceId: string, 
/**
 * The canonical absolute path.
 */
path: string, 
/**
 * Unix milliseconds.
 */
createdAt: number, lastOpenedAt: number, 
/**
 * Whether the daemon holds the workspace's live state (claimed, busy, watched, or not yet
 * unloaded after its idle delay).
 */
loaded: boolean, 
/**
 * Clients holding the workspace open, including ones inside their reconnect grace period.
 */
claims: Array<WorkspaceClaim>, 
/**
 * Sessions with an active or queued run.
 */
busySessions: Array<BusySession>, };

export type WorkspaceClaim = { clientId: string, 
/**
 * The `clientInfo.name` it gave, if any.
 */
name?: string | null, 
/**
 * False while the client is disconnected and its claim waits out the grace period.
 */
connected: boolean, 
/**
 * For a disconnected client: milliseconds until its claim is released.
 */
expiresInMs?: number | null, };

export type BusySession = { sessionId: string, activeRunId?: string | null, queued: Array<string>, };

export type WorkspaceListResult = { workspaces: Array<WorkspaceInfo>, };

export type SessionCreateParams = { workspaceId: string, 
/**
 * Defaults to "New session".
 */
title?: string | null, 
/**
 * The session's model (a name from `model/list`); the daemon's default otherwise.
 */
model?: string | null, 
/**
 * Run tool calls without asking (see `session/setYolo`).
 */
yolo: boolean, };

export type SessionListParams = { workspaceId: string, };

export type SessionRef = { sessionId: string, };

export type SessionRenameParams = { sessionId: string, title: string, };

export type SessionInfo = { sessionId: string, workspaceId: string, title: string, model?: string | null, createdAt: number, updatedAt: number, messageCount: number, promptTokens: number, completionTokens: number, 
/**
 * The cost of the session's priced model use (see `usage.cost` for whether that is all).
 */
cost: number, 
/**
 * The session's token totals and their cost (absent from daemons that do not count them).
 */
usage?: Usage | null, };

export type Usage = { 
/**
 * Input (prompt) tokens, cached ones included.
 */
inputTokens: number, 
/**
 * Output (completion) tokens, reasoning included.
 */
outputTokens: number, 
/**
 * The part of `inputTokens` read from the provider's prompt cache.
 */
cachedTokens: number, 
/**
 * The part of `outputTokens` spent on reasoning (providers that report it).
 */
reasoningTokens: number, 
/**
 * In US dollars; `null` when a price was unknown. Always written, `null` included.
 */
cost: number | null, };

export type SessionListResult = { sessions: Array<SessionInfo>, };

export type SessionDeleteResult = { deleted: boolean, };

export type SessionCompactResult = { 
/**
 * Whether a summary was written; `false` when nothing is old enough to summarise (the
 * session's first prompt and its latest turn are always kept as they are).
 */
compacted: boolean, 
/**
 * The `system` message holding the `summary` part.
 */
summaryMessageId?: string | null, 
/**
 * Stored messages the summary replaces in what the model is shown.
 */
messages: number, 
/**
 * The daemon's count of the conversation the model would be shown, before and after.
 */
tokensBefore: number, tokensAfter: number, };

export type SessionForkParams = { sessionId: string, 
/**
 * The last message the fork keeps (a message of the session); absent: all of them.
 */
messageId?: string | null, };

export type SessionRevertParams = { sessionId: string, 
/**
 * The first message to undo: the files go back to their state before its run.
 */
messageId: string, 
/**
 * Overwrite files changed outside the runs since (listed as `conflicts` without it).
 */
force: boolean, };

export type SessionUnrevertParams = { sessionId: string, 
/**
 * Overwrite files changed since the revert (listed as `conflicts` without it).
 */
force: boolean, };

export type SessionRevertResult = { 
/**
 * Whether it was done; `false` with `conflicts` (nothing was changed), or for an unrevert
 * with nothing to undo.
 */
done: boolean, 
/**
 * The revert (made or undone).
 */
revertId?: string | null, 
/**
 * The files written or removed.
 */
files: Array<string>, 
/**
 * Files changed outside the runs since; pass `force` to overwrite them.
 */
conflicts: Array<string>, 
/**
 * Messages hidden (revert) or shown again (unrevert).
 */
messages: number, };

export type SessionDiffParams = { sessionId: string, 
/**
 * A message of the run whose changes are wanted; absent: the whole session's.
 */
messageId?: string | null, };

export type SessionDiffResult = { 
/**
 * The unified diff (Git's format, paths relative to the workspace); empty for no change.
 */
diff: string, 
/**
 * Each changed file.
 */
files: Array<FileChange>, 
/**
 * Files too large to snapshot while those runs ran: their changes are not in the diff.
 */
skipped: Array<string>, };

export type FileChange = { path: string, 
/**
 * `added`, `modified`, `deleted` or `typeChanged`.
 */
status: string, };

export type SessionMessagesParams = { sessionId: string, 
/**
 * Only messages with `seq` below this (the `nextBefore` of the previous page).
 */
before?: number | null, 
/**
 * Page size, 1..=1000; default 100.
 */
limit?: number | null, };

export type MessageInfo = { messageId: string, sessionId: string, 
/**
 * Position in the session, from 1.
 */
seq: number, runId?: string | null, 
/**
 * `user`, `assistant`, `tool` or `system`.
 */
role: string, 
/**
 * Text, reasoning, tool calls, tool results, attachments.
 */
parts: Array<Part>, model?: string | null, provider?: string | null, 
/**
 * `end_turn`, `max_tokens`, `tool_use`, `canceled`, `error`, `interrupted`; absent while streaming.
 */
finishReason?: FinishReason | null, error?: string | null, createdAt: number, updatedAt: number, finishedAt?: number | null, 
/**
 * Hidden from the model by `session/revert` (still stored and listed); absent when not.
 */
reverted?: boolean, };

export type SessionMessagesResult = { messages: Array<MessageInfo>, 
/**
 * Whether older messages exist.
 */
hasMore: boolean, 
/**
 * Pass as `before` to get the previous page; absent when `hasMore` is false.
 */
nextBefore?: number | null, };

export type RunRef = { runId: string, };

export type RunInfo = { runId: string, sessionId: string, 
/**
 * `accepted`, `queued`, `running`, `completed`, `cancelled`, `failed`, `interrupted`.
 */
state: RunState, prompt: string, error?: string | null, userMessageId?: string | null, assistantMessageId?: string | null, createdAt: number, startedAt?: number | null, finishedAt?: number | null, 
/**
 * For a steered run: the run whose turn it joined.
 */
foldedInto?: string | null, 
/**
 * The tokens of the run's turn and their cost, once it ended (absent for a folded run:
 * its tokens are the turn's it joined).
 */
usage?: Usage | null, 
/**
 * As `$/runComplete`'s: the daemon's limit that stopped the run, if one did.
 */
stopReason?: RunStopReason | null, };

export type WorkspaceCloseParams = { workspaceId: string, 
/**
 * Also stop the workspace: cancel its active and queued runs and refuse new ones until it
 * is opened again. Without it, close only releases this client's claim and runs go on.
 */
force: boolean, };

export type WorkspaceCloseResult = { 
/**
 * Whether this client held a claim that is now released.
 */
released: boolean, 
/**
 * Claims other clients still hold.
 */
remainingClaims: number, 
/**
 * Runs that were active or queued and ended cancelled (only with `force`).
 */
cancelledRuns: Array<string>, };

export type SendMode = "queue" | "steer";

export type Attachment = { 
/**
 * A file name or label shown to the model with the text.
 */
name?: string | null, mimeType?: string | null, text: string, };

export type ImageInput = { 
/**
 * `image/png`, `image/jpeg`, `image/gif` or `image/webp`.
 */
mimeType: string, 
/**
 * The image's bytes in base64 (standard alphabet, padded).
 */
data: string, 
/**
 * A file name or label.
 */
name?: string | null, };

export type AgentSendParams = { sessionId: string, prompt: string, attachments?: Array<Attachment>, 
/**
 * Images shown to the model with the prompt (only to a model that accepts images).
 */
images?: Array<ImageInput>, 
/**
 * A client-chosen id making the send idempotent; a UUID v7 is generated when absent.
 */
runId?: string | null, mode: SendMode, 
/**
 * A model name from `model/list`; the session's or the daemon's default otherwise.
 */
model?: string | null, 
/**
 * Run this prompt's tool calls without asking.
 */
yolo?: boolean, };

export type AgentSendResult = { runId: string, 
/**
 * `running` or `queued` for a new run; for a repeated `runId`, the run's current state
 * (which may be terminal: `completed`, `cancelled`, `failed`, `interrupted`).
 */
state: RunState, };

export type AgentCancelParams = { sessionId: string, 
/**
 * Cancel only this run (active, steered or queued); the session's other runs go on. A run
 * that already ended is not an error: nothing is cancelled.
 */
runId?: string | null, };

export type AgentCancelResult = { 
/**
 * Every run this cancel ended: the active one, steered and queued prompts.
 */
cancelled: Array<string>, };

export type AgentStatusResult = { 
/**
 * `idle`, `active`, or `waitingForPermission` (active, and a tool call waits for an answer
 * to `permission/request`).
 */
state: AgentState, activeRunId?: string | null, 
/**
 * Waiting prompts in the order they will run (steered ones first).
 */
queued: Array<string>, 
/**
 * Permission requests waiting for an answer.
 */
pendingPermissions?: Array<PermissionRequestParams>, };

export type SessionSubscribeParams = { sessionId: string, 
/**
 * Replay every event with a higher seq before the live stream (the last seq the client
 * saw). Absent: live events only.
 */
afterSeq?: number | null, 
/**
 * The epoch `afterSeq` belongs to (from `initialize` or an earlier subscribe). A different
 * epoch means the daemon restarted: the answer is `resync`.
 */
epoch?: string | null, };

export type SessionSubscribeResult = { 
/**
 * The session's last event sequence number when the live stream took over: every replayed
 * event has a seq at most this, every live one a higher seq.
 */
seq: number, 
/**
 * The daemon's stream epoch (see `initialize`).
 */
epoch: string, 
/**
 * True when `afterSeq` could not be honoured (the replay log no longer reaches it, or it
 * is from another epoch): nothing was replayed; reload with `session/messages`, take
 * `streaming` as the current text of the message being streamed, and continue after `seq`.
 */
resync: boolean, 
/**
 * Events replayed before this answer (each as a `$/sessionUpdate`).
 */
replayed: number, status: AgentStatusResult, 
/**
 * The assistant message being streamed, as of `seq` (the database copy may lag behind by
 * up to the flush interval).
 */
streaming?: StreamingMessage | null, };

export type StreamingMessage = { messageId: string, runId?: string | null, 
/**
 * Parts in the shape of `session/messages` (`text`, `reasoning`, `toolCall`).
 */
parts: Array<Part>, };

export type SessionUnsubscribeResult = { 
/**
 * False when this connection was not subscribed.
 */
unsubscribed: boolean, };

export type ModelPrice = { input: number, output: number, 
/**
 * Input tokens read from the prompt cache.
 */
cached: number, };

export type ModelInfo = { 
/**
 * The name used in `agent/send`, `session/create` and the config file:
 * `<provider>/<model id>`.
 */
name: string, 
/**
 * The provider's id in the configuration (`openai`, `anthropic`, `ollama`, …).
 */
provider: string, 
/**
 * The API the provider speaks: `openai` (Chat Completions), `anthropic` (Messages) or
 * `echo` (the built-in diagnostic).
 */
api: string, 
/**
 * The provider's model id.
 */
model: string, baseUrl?: string | null, contextWindow?: number | null, maxOutputTokens?: number | null, 
/**
 * Where `contextWindow` comes from: `preset`, `config` or `default` (the daemon knows
 * nothing of the model and budgets against a conservative window).
 */
contextWindowSource?: ContextWindowSource | null, 
/**
 * What its tokens cost, when known (presets or the config file).
 */
price?: ModelPrice | null, 
/**
 * Why the model cannot be used right now (e.g. its API key variable is unset).
 */
unavailable?: string | null, 
/**
 * Whether it accepts images (in prompts and in tool results), per the presets or the
 * config file's `images` key.
 */
images: boolean, };

export type ModelListResult = { default?: string | null, models: Array<ModelInfo>, 
/**
 * How the models' `bash` commands are confined by default, as in `daemon/status`: a
 * client that shows models shows the warning too.
 */
sandbox?: SandboxStatus | null, };

export type McpScope = "global" | "project" | "session";

export type McpServerState = "idle" | "starting" | "ready" | "failed" | "disabled" | "unapproved";

export type McpServerInfo = { 
/**
 * Its name in the config (`[mcp.servers.NAME]`); its tools are `mcp__NAME__TOOL`.
 */
name: string, scope: McpScope, 
/**
 * For a `project` server: the workspace whose `.mcp.json` defines it.
 */
workspaceId?: string | null, 
/**
 * For a `session` server: the session that was given it.
 */
sessionId?: string | null, state: McpServerState, 
/**
 * The command line it runs.
 */
command: string, 
/**
 * Why it last failed (start, exit, timeout); cleared when it becomes ready.
 */
lastError?: string | null, 
/**
 * The process id while it runs.
 */
pid?: number | null, 
/**
 * How many tools are offered to the model (the length of `tools`).
 */
toolCount: number, 
/**
 * The server's tool names (as the server names them) offered to the model.
 */
tools: Array<string>, 
/**
 * Tools the server lists that are not offered, each with the reason.
 */
rejectedTools?: Array<McpRejectedTool>, 
/**
 * How many times it was started again after its first start.
 */
restarts: number, 
/**
 * What the server said about itself at `initialize`.
 */
serverName?: string | null, serverVersion?: string | null, 
/**
 * The MCP protocol version negotiated with it.
 */
protocolVersion?: string | null, };

export type McpRejectedTool = { name: string, reason: string, };

export type McpListResult = { servers: Array<McpServerInfo>, };

export type McpRestartParams = { 
/**
 * The server's name.
 */
name: string, 
/**
 * For a project server (`.mcp.json`): its workspace. Without it (and without
 * `sessionId`) a global server of that name is restarted, else a project server of that
 * name.
 */
workspaceId?: string | null, 
/**
 * For a session's server (`session/setMcpServers`): its session.
 */
sessionId?: string | null, };

export type McpServerConfig = { 
/**
 * Its name; its tools are `mcp__NAME__TOOL` (letters, digits, `-`, `_`; no `__`).
 */
name: string, command?: string | null, args?: Array<string>, env?: { [key in string]: string }, url?: string | null, headers?: { [key in string]: string }, };

export type SessionSetMcpServersParams = { sessionId: string, 
/**
 * The session's servers from now on (empty: none).
 */
servers: Array<McpServerConfig>, };

export type RunCompleteParams = { sessionId: string, runId: string, 
/**
 * The turn's last assistant message.
 */
messageId?: string | null, 
/**
 * The text of that message.
 */
text?: string | null, 
/**
 * Why the run failed; absent when it completed or was cancelled.
 */
error?: string | null, 
/**
 * Set when a limit of the daemon's stopped the run (it then also has `error`, for
 * clients that do not know this field). A reason this build does not know reads as none.
 */
stopReason?: RunStopReason | null, cancelled: boolean, 
/**
 * For a steered prompt: the run whose turn it joined.
 */
foldedInto?: string | null, 
/**
 * The tokens of the run's turn and their cost (absent when no turn ran for it).
 */
usage?: Usage | null, };

export type SessionUpdateParams = { sessionId: string, 
/**
 * Increases with every event of the session. Consecutive text (or reasoning) deltas of one
 * message queued for a slow client are merged into one event carrying the last seq, so a
 * client may see seqs skip; order is never changed.
 */
seq: number, runId?: string | null, } & ({ "kind": "runQueued", position: number, steer: boolean, } | { "kind": "runStarted" } | { "kind": "runFolded", into: string, } | { "kind": "cancelRequested", runIds: Array<string>, } | { "kind": "runFinished", state: RunState, error?: string | null, 
/**
 * The assistant message of the run's turn (absent when it never started one).
 */
messageId?: string | null, } | { "kind": "userMessage", messageId: string, text: string, } | { "kind": "assistantStarted", messageId: string, model: string, } | { "kind": "textDelta", messageId: string, text: string, } | { "kind": "reasoningDelta", messageId: string, text: string, } | { "kind": "retrying", attempt: number, maxAttempts: number, delayMs: number, error: string, } | { "kind": "toolCallStarted", messageId: string, toolCallId: string, tool: string, input: JsonValue, } | { "kind": "permissionRequested", requestId: string, toolCallId: string, tool: string, title: string, } | { "kind": "permissionResolved", requestId: string, decision: PermissionResolution, by: string, } | { "kind": "toolCallFinished", messageId: string, toolCallId: string, tool: string, status: ToolStatus, output: string, metadata?: JsonValue | null, } | { "kind": "compacted", fromMessageId: string, toMessageId: string, tokensBefore: number, tokensAfter: number, stubbed: number, dropped: number, summaryMessageId?: string | null, } | { "kind": "messageFinished", messageId: string, finishReason: FinishReason, error?: string | null, } | { "kind": "sessionUpdated", title: string, model?: string | null, } | { "kind": "reverted", revertId: string, messageId: string, files: Array<string>, messages: number, } | { "kind": "unreverted", revertId: string, files: Array<string>, messages: number, } | { "kind": "forked", forkSessionId: string, messageId?: string | null, });

export type SessionEvent = { "kind": "runQueued", position: number, steer: boolean, } | { "kind": "runStarted" } | { "kind": "runFolded", into: string, } | { "kind": "cancelRequested", runIds: Array<string>, } | { "kind": "runFinished", state: RunState, error?: string | null, 
/**
 * The assistant message of the run's turn (absent when it never started one).
 */
messageId?: string | null, } | { "kind": "userMessage", messageId: string, text: string, } | { "kind": "assistantStarted", messageId: string, model: string, } | { "kind": "textDelta", messageId: string, text: string, } | { "kind": "reasoningDelta", messageId: string, text: string, } | { "kind": "retrying", attempt: number, maxAttempts: number, delayMs: number, error: string, } | { "kind": "toolCallStarted", messageId: string, toolCallId: string, tool: string, input: JsonValue, } | { "kind": "permissionRequested", requestId: string, toolCallId: string, tool: string, title: string, } | { "kind": "permissionResolved", requestId: string, decision: PermissionResolution, by: string, } | { "kind": "toolCallFinished", messageId: string, toolCallId: string, tool: string, status: ToolStatus, output: string, metadata?: JsonValue | null, } | { "kind": "compacted", fromMessageId: string, toMessageId: string, tokensBefore: number, tokensAfter: number, stubbed: number, dropped: number, summaryMessageId?: string | null, } | { "kind": "messageFinished", messageId: string, finishReason: FinishReason, error?: string | null, } | { "kind": "sessionUpdated", title: string, model?: string | null, } | { "kind": "reverted", revertId: string, messageId: string, files: Array<string>, messages: number, } | { "kind": "unreverted", revertId: string, files: Array<string>, messages: number, } | { "kind": "forked", forkSessionId: string, messageId?: string | null, };

export type CancelParams = { id: number | string, };

export type DaemonShutdownNoticeParams = { 
/**
 * Why: `signal`, `request`, `idle`.
 */
reason: string, };

/** Client→daemon requests: params and result of each method. */
export interface Requests {
  "initialize": { params: InitializeParams; result: InitializeResult };
  "shutdown": { params: Record<string, never>; result: null };
  "daemon/status": { params: Record<string, never>; result: DaemonStatusResult };
  "daemon/shutdown": { params: DaemonShutdownParams; result: DaemonShutdownResult };
  "workspace/open": { params: WorkspaceOpenParams; result: WorkspaceInfo };
  "workspace/list": { params: Record<string, never>; result: WorkspaceListResult };
  "session/create": { params: SessionCreateParams; result: SessionInfo };
  "session/list": { params: SessionListParams; result: SessionListResult };
  "session/get": { params: SessionRef; result: SessionInfo };
  "session/rename": { params: SessionRenameParams; result: SessionInfo };
  "session/delete": { params: SessionRef; result: SessionDeleteResult };
  "session/compact": { params: SessionRef; result: SessionCompactResult };
  "session/fork": { params: SessionForkParams; result: SessionInfo };
  "session/diff": { params: SessionDiffParams; result: SessionDiffResult };
  "session/revert": { params: SessionRevertParams; result: SessionRevertResult };
  "session/unrevert": { params: SessionUnrevertParams; result: SessionRevertResult };
  "session/messages": { params: SessionMessagesParams; result: SessionMessagesResult };
  "run/get": { params: RunRef; result: RunInfo };
  "workspace/close": { params: WorkspaceCloseParams; result: WorkspaceCloseResult };
  "agent/send": { params: AgentSendParams; result: AgentSendResult };
  "agent/cancel": { params: AgentCancelParams; result: AgentCancelResult };
  "agent/status": { params: SessionRef; result: AgentStatusResult };
  "session/subscribe": { params: SessionSubscribeParams; result: SessionSubscribeResult };
  "session/unsubscribe": { params: SessionRef; result: SessionUnsubscribeResult };
  "model/list": { params: Record<string, never>; result: ModelListResult };
  "session/setModel": { params: SessionSetModelParams; result: SessionInfo };
  "session/setYolo": { params: SessionSetYoloParams; result: SessionSetYoloResult };
  "session/setSandbox": { params: SessionSetSandboxParams; result: SandboxStatus };
  "permission/respond": { params: PermissionRespondParams; result: PermissionRespondResult };
  "permission/rules/list": { params: PermissionRulesListParams; result: PermissionRulesListResult };
  "permission/rules/remove": { params: PermissionRulesRemoveParams; result: PermissionRulesRemoveResult };
  "permission/log": { params: PermissionLogParams; result: PermissionLogResult };
  "config/get": { params: Record<string, never>; result: ConfigGetResult };
  "mcp/list": { params: Record<string, never>; result: McpListResult };
  "mcp/restart": { params: McpRestartParams; result: McpServerInfo };
  "session/setMcpServers": { params: SessionSetMcpServersParams; result: McpListResult };
  "debug/sleep": { params: DebugSleepParams; result: DebugSleepResult };
  "debug/stats": { params: Record<string, never>; result: DebugStatsResult };
  "debug/clientRequest": { params: DebugClientRequestParams; result: unknown };
}

/** Daemon→client notifications. */
export interface DaemonNotifications {
  "$/daemonShutdown": DaemonShutdownNoticeParams;
  "$/runComplete": RunCompleteParams;
  "$/sessionUpdate": SessionUpdateParams;
  "$/permissionResolved": PermissionResolvedParams;
}

/** Client→daemon notifications. */
export interface ClientNotifications {
  "initialized": Record<string, never>;
  "exit": Record<string, never>;
  "$/cancelRequest": CancelParams;
}

/** Daemon→client requests. */
export interface DaemonRequests {
  "permission/request": { params: PermissionRequestParams; result: PermissionRequestResult };
}
