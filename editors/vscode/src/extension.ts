// Entry point: wires the protocol client, the controller, the chat webview view, the palette
// commands, the status bar item and the settings together.
import * as vscode from "vscode";
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes, randomUUID } from "node:crypto";
import { CrushClient, Target } from "./client";
import { Controller, DIFF_SCHEME, diffContents, FromWebview, ruleWhat, SCOPE_TEXT, Settings } from "./controller";
import { resolveSocketPath } from "./socketPath";
import { FolderMemento } from "./folderMemento";
import type { SessionRevertResult } from "./protocol.generated";
import { MCP_VIEW_ID, McpNode, McpServersView } from "./mcpView";

export const VIEW_ID = "crush.chat";

export function readSettings(): Settings {
  const c = vscode.workspace.getConfiguration("crush");
  return {
    socketPath: c.get<string>("socketPath", ""),
    crushctlPath: c.get<string>("crushctlPath", "crushctl") || "crushctl",
    remote: c.get<string>("remote", "").trim(),
    remoteWorkspace: c.get<string>("remoteWorkspace", "").trim(),
    remoteCrushctl: c.get<string>("remoteCrushctl", "").trim(),
    defaultModel: c.get<string>("defaultModel", ""),
    yolo: c.get<boolean>("yolo", false),
  };
}

/** The settings that decide where the extension connects (and which workspace it opens there). */
export const TARGET_SETTINGS = [
  "crush.socketPath",
  "crush.crushctlPath",
  "crush.remote",
  "crush.remoteCrushctl",
  "crush.remoteWorkspace",
] as const;

/** The daemon the settings choose. */
export function targetOf(settings: Settings): Target {
  return {
    socketPath: resolveSocketPath(settings.socketPath),
    crushctlPath: settings.crushctlPath,
    remote: settings.remote ? { host: settings.remote, crushctl: settings.remoteCrushctl || undefined } : undefined,
  };
}

/**
 * The chat view's HTML: a strict CSP (one nonce'd script, the extension's own styles and the
 * codicon font, nothing inline), no inline handlers.
 */
export function chatHtml(webview: vscode.Webview, extensionUri: vscode.Uri): string {
  const nonce = randomBytes(16).toString("base64");
  const script = webview.asWebviewUri(vscode.Uri.joinPath(extensionUri, "dist", "chat.js"));
  const style = webview.asWebviewUri(vscode.Uri.joinPath(extensionUri, "media", "chat.css"));
  const codicons = webview.asWebviewUri(vscode.Uri.joinPath(extensionUri, "dist", "codicons", "codicon.css"));
  const csp = [
    "default-src 'none'",
    `style-src ${webview.cspSource}`,
    `font-src ${webview.cspSource}`,
    `img-src ${webview.cspSource}`,
    `script-src 'nonce-${nonce}'`,
  ].join("; ");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${codicons}">
<link rel="stylesheet" href="${style}">
<title>Crush</title>
</head>
<body>
<div id="header"><button id="sessionsToggle" class="secondary" title="Sessions of this folder" aria-expanded="false"><span class="codicon codicon-list-unordered"></span><span id="sessionTitle">No session</span></button><button id="new" class="icon" title="New session"><span class="codicon codicon-add"></span></button></div>
<div id="sessionList" role="listbox" hidden></div>
<div id="usage"></div>
<div id="status"></div>
<div id="log"></div>
<div id="pending"></div>
<div id="prompts"></div>
<form id="form"><textarea id="prompt" rows="3" placeholder="Ask Crush… (Ctrl+Enter to send)"></textarea>
<div id="actions"><select id="model" title="Model"></select><button type="submit" id="send" title="Send (Ctrl+Enter)"><span class="codicon codicon-send"></span>Send</button><button type="button" id="steer" class="secondary" title="Join the running turn"><span class="codicon codicon-debug-step-into"></span>Steer</button><button type="button" id="cancel" class="secondary" title="Cancel the session's runs"><span class="codicon codicon-debug-stop"></span>Cancel</button></div></form>
<script nonce="${nonce}" src="${script}"></script>
</body>
</html>`;
}

class ChatViewProvider implements vscode.WebviewViewProvider {
  constructor(
    private readonly controller: Controller,
    private readonly extensionUri: vscode.Uri,
  ) {}

  resolveWebviewView(view: vscode.WebviewView): void {
    view.webview.options = {
      enableScripts: true,
      localResourceRoots: [vscode.Uri.joinPath(this.extensionUri, "media"), vscode.Uri.joinPath(this.extensionUri, "dist")],
    };
    view.webview.html = chatHtml(view.webview, this.extensionUri);
    this.controller.view = view;
    view.webview.onDidReceiveMessage((m: FromWebview) => this.controller.handleMessage(m));
    view.onDidDispose(() => {
      if (this.controller.view === view) {
        this.controller.view = undefined;
      }
    });
  }
}

export interface Api {
  controller: Controller;
  client: CrushClient;
  mcpView: McpServersView;
}

let active: { client: CrushClient; controller: Controller } | undefined;

export function activate(context: vscode.ExtensionContext): Api {
  const output = vscode.window.createOutputChannel("Crush");
  const settings = readSettings();
  // One id per window (extension host), kept across reconnects; never shared between windows.
  const clientId = randomUUID();
  const client = new CrushClient({
    ...targetOf(settings),
    clientId,
    clientName: "vscode",
    clientVersion: String(context.extension?.packageJSON?.version ?? "0.1.0"),
    log: (line) => output.appendLine(line),
  });
  const statusBar = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Left, 100);
  statusBar.command = "crush.showDaemonStatus";
  statusBar.show();
  // The storage folder only where it is a path on the extension host's disk.
  const storage = context.storageUri?.scheme === "file" ? context.storageUri.fsPath : undefined;
  const memento = new FolderMemento(storage, context.workspaceState, (line) => output.appendLine(line));
  output.appendLine(`the session shown is remembered in ${storage ?? `workspaceState (storage folder: ${context.storageUri?.toString() ?? "none"})`}`);
  const controller = new Controller(client, statusBar, readSettings, output, memento);
  active = { client, controller };

  const guarded =
    <A extends unknown[]>(f: (...a: A) => Promise<unknown>) =>
    async (...a: A) => {
      try {
        return await f(...a);
      } catch (e) {
        controller.showError(e);
        return undefined;
      }
    };

  const mcpView = new McpServersView(
    client,
    () => controller.workspaceId,
    () => controller.model?.sessionId,
  );
  const mcpTree = vscode.window.createTreeView(MCP_VIEW_ID, { treeDataProvider: mcpView });
  // Where the window connects (the target settings), to notice when they change.
  let connectedTo = JSON.stringify([targetOf(settings), settings.remote ? settings.remoteWorkspace : ""]);

  context.subscriptions.push(
    output,
    statusBar,
    controller,
    vscode.window.registerWebviewViewProvider(VIEW_ID, new ChatViewProvider(controller, context.extensionUri), {
      webviewOptions: { retainContextWhenHidden: true },
    }),
    mcpTree,
    mcpTree.onDidChangeVisibility((e) => {
      if (e.visible) {
        void mcpView.refresh();
      }
    }),
    vscode.commands.registerCommand(
      "crush.refreshMcpServers",
      guarded(() => mcpView.refresh()),
    ),
    vscode.commands.registerCommand(
      "crush.restartMcpServer",
      guarded((node?: McpNode) => mcpView.restart(node)),
    ),
    vscode.workspace.registerTextDocumentContentProvider(DIFF_SCHEME, {
      provideTextDocumentContent: (uri) => diffContents.get(uri.toString()) ?? "",
    }),
    vscode.commands.registerCommand(
      "crush.newSession",
      guarded(async () => {
        const info = await controller.newSession();
        // From the palette the new session must be seen: show the chat view.
        await vscode.commands.executeCommand(`${VIEW_ID}.focus`);
        return info;
      }),
    ),
    vscode.commands.registerCommand(
      "crush.sendSelection",
      guarded(async (prompt?: string) => {
        const editor = vscode.window.activeTextEditor;
        if (!editor) {
          throw new Error("No active editor: select some code first.");
        }
        const sel = editor.selection;
        const text = sel.isEmpty ? editor.document.getText() : editor.document.getText(sel);
        const rel = vscode.workspace.asRelativePath(editor.document.uri, false);
        const name = sel.isEmpty ? rel : `${rel}:${sel.start.line + 1}-${sel.end.line + 1}`;
        const ask =
          prompt ??
          (await vscode.window.showInputBox({ prompt: `Prompt for ${name}`, placeHolder: "Explain this code" }));
        if (ask === undefined) {
          return undefined;
        }
        return controller.send(ask, "queue", [
          { name, mimeType: `text/x-${editor.document.languageId}`, text },
        ]);
      }),
    ),
    vscode.commands.registerCommand(
      "crush.cancel",
      guarded(async () => controller.cancel()),
    ),
    vscode.commands.registerCommand(
      "crush.attachSession",
      guarded(async (sessionId?: string) => {
        if (!sessionId) {
          await controller.connect();
          const picked = await vscode.window.showQuickPick(
            controller.sessions.map((s) => ({ label: s.title, description: s.model ?? "", detail: s.sessionId })),
            { placeHolder: "Session to attach to (shared with your other editors)" },
          );
          sessionId = picked?.detail;
        }
        if (sessionId) {
          await controller.attach(sessionId);
          await vscode.commands.executeCommand(`${VIEW_ID}.focus`);
        }
        return sessionId;
      }),
    ),
    vscode.commands.registerCommand(
      "crush.compactSession",
      guarded(async () => {
        const r = await vscode.window.withProgress(
          { location: vscode.ProgressLocation.Notification, title: "Crush: summarising the session's older messages…" },
          () => controller.compact(),
        );
        void vscode.window.showInformationMessage(
          r.compacted
            ? `Crush: summarised ${r.messages} older messages (${r.tokensBefore} → ${r.tokensAfter} tokens the model is shown).`
            : "Crush: nothing to compact — only the first prompt and the latest turn are left as they are.",
        );
        return r;
      }),
    ),
    vscode.commands.registerCommand(
      "crush.undo",
      guarded(async () => revertOutcome("Undone", await controller.undo(), () => controller.undo(true))),
    ),
    vscode.commands.registerCommand(
      "crush.redo",
      guarded(async () => revertOutcome("Redone", await controller.redo(), () => controller.redo(true))),
    ),
    vscode.commands.registerCommand(
      "crush.showDiff",
      guarded(async () => {
        const d = await controller.diff();
        const doc = await vscode.workspace.openTextDocument({
          language: "diff",
          content: d.diff || "(no changes)",
        });
        await vscode.window.showTextDocument(doc, { preview: true });
        if (d.skipped.length > 0) {
          void vscode.window.showWarningMessage(
            `Crush: not in the diff (too large to snapshot): ${d.skipped.join(", ")}`,
          );
        }
        return d;
      }),
    ),
    vscode.commands.registerCommand(
      "crush.forkSession",
      guarded(async () => {
        const info = await controller.fork();
        await vscode.commands.executeCommand(`${VIEW_ID}.focus`);
        return info;
      }),
    ),
    vscode.commands.registerCommand(
      "crush.permissionRules",
      guarded(async () => {
        const rules = await controller.permissionRules();
        if (rules.length === 0) {
          void vscode.window.showInformationMessage(
            'Crush: no saved permission rules apply here (answer a prompt with "Always allow" to save one).',
          );
          return undefined;
        }
        const picked = await vscode.window.showQuickPick(
          rules.map((r) => ({
            label: ruleWhat(r.tool, r.pattern),
            description: SCOPE_TEXT[r.scope],
            detail: `saved by ${r.createdBy}, ${new Date(r.createdAt).toLocaleString()} · ${r.id}`,
            rule: r,
          })),
          { placeHolder: "Saved permission rules: pick one to remove it" },
        );
        if (!picked) {
          return undefined;
        }
        const what = `${picked.label} (${picked.description})`;
        const yes = await vscode.window.showWarningMessage(
          `Crush: remove the rule ${what}? Such calls will be asked about again.`,
          { modal: true },
          "Remove",
        );
        if (yes !== "Remove") {
          return undefined;
        }
        await controller.removePermissionRule(picked.rule.id);
        void vscode.window.showInformationMessage(`Crush: removed the rule ${what}.`);
        return picked.rule.id;
      }),
    ),
    vscode.commands.registerCommand(
      "crush.showDaemonStatus",
      guarded(async () => {
        const s = await client.request("daemon/status", {});
        const text = `crushd ${s.version} (protocol ${s.protocolVersion}), pid ${s.pid}, up ${Math.round(s.uptimeMs / 1000)} s, ${s.connections} connection(s), socket ${s.socket}, logs in ${s.logDir}`;
        output.appendLine(text);
        void vscode.window.showInformationMessage(text);
        return s;
      }),
    ),
    vscode.commands.registerCommand(
      "crush.openLogs",
      guarded(async () => {
        output.show(true);
        const s = await client.request("daemon/status", {});
        const logs = fs.existsSync(s.logDir)
          ? fs
              .readdirSync(s.logDir)
              .filter((f) => f.startsWith("crushd.log"))
              .sort()
          : [];
        if (logs.length === 0) {
          void vscode.window.showInformationMessage(`No crushd log files in ${s.logDir} yet.`);
          return undefined;
        }
        const file = path.join(s.logDir, logs[logs.length - 1]);
        const doc = await vscode.workspace.openTextDocument(vscode.Uri.file(file));
        await vscode.window.showTextDocument(doc, { preview: true });
        return file;
      }),
    ),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (TARGET_SETTINGS.some((s) => e.affectsConfiguration(s))) {
        const now = readSettings();
        const target = JSON.stringify([targetOf(now), now.remote ? now.remoteWorkspace : ""]);
        if (target !== connectedTo) {
          connectedTo = target;
          // A move still under way is overtaken: the latest settings win.
          void controller
            .retarget(targetOf(now))
            .then(() => mcpView.refresh())
            .catch((err) => controller.showError(err));
        }
      }
      if (e.affectsConfiguration("crush.yolo") && readSettings().yolo) {
        void vscode.window.showWarningMessage(
          "Crush yolo mode is on: the agent will write files and run commands without asking. Turn off crush.yolo to be asked again.",
        );
      }
    }),
  );

  if (settings.yolo) {
    void vscode.window.showWarningMessage(
      "Crush yolo mode is on: the agent will write files and run commands without asking.",
    );
  }
  // Connect in the background; failures are shown, and the status bar says "disconnected".
  void controller
    .connect()
    .then(() => mcpView.refresh())
    .catch((e) => controller.showError(e));
  return { controller, client, mcpView };
}

export async function deactivate(): Promise<void> {
  const a = active;
  active = undefined;
  if (a) {
    a.controller.dispose();
    await a.client.dispose();
  }
}

/** Tells what an undo or redo did; on conflicts offers to overwrite (`force`). */
async function revertOutcome(
  what: string,
  r: SessionRevertResult,
  force: () => Promise<SessionRevertResult>,
): Promise<SessionRevertResult> {
  if (!r.done && r.conflicts.length > 0) {
    const pick = await vscode.window.showWarningMessage(
      `Crush: nothing was ${what.toLowerCase()}: these files changed outside the runs since: ${r.conflicts.join(", ")}`,
      "Overwrite Them",
    );
    return pick ? revertOutcome(what, await force(), force) : r;
  }
  void vscode.window.showInformationMessage(
    r.done
      ? `Crush: ${what} — ${r.messages} messages, ${r.files.length} files${r.files.length ? ": " + r.files.join(", ") : ""}.`
      : "Crush: nothing to redo (no undo since the last prompt).",
  );
  return r;
}
