// The "MCP Servers" view: every MCP server this window's agent can use (the daemon's global
// servers and this workspace's `.mcp.json` servers), its state, tools and last error, with a
// Restart action. Read with `mcp/list` when the view opens and on Refresh (the daemon sends no
// notification when a server's state changes, so the view does not pretend to be live).
import * as vscode from "vscode";
import type { CrushClient } from "./client";
import type { McpServerInfo, McpServerState } from "./protocol.generated";

export const MCP_VIEW_ID = "crush.mcp";

export type McpNode =
  | { kind: "server"; info: McpServerInfo }
  | { kind: "tool"; server: string; name: string; rejected?: string }
  | { kind: "note"; text: string };

const STATE_ICONS: Record<McpServerState, string> = {
  ready: "pass",
  starting: "loading~spin",
  idle: "circle-outline",
  failed: "error",
  disabled: "circle-slash",
  unapproved: "shield",
};

export class McpServersView implements vscode.TreeDataProvider<McpNode> {
  private readonly changed = new vscode.EventEmitter<McpNode | undefined>();
  readonly onDidChangeTreeData = this.changed.event;
  private servers: McpServerInfo[] = [];
  private problem: string | undefined;

  constructor(
    private readonly client: CrushClient,
    /** This window's workspace id, once the daemon has opened it. */
    private readonly workspaceId: () => string | undefined,
  ) {}

  /** Reads the servers again; returns what the view now shows. */
  async refresh(): Promise<McpServerInfo[]> {
    try {
      const r = await this.client.request("mcp/list", {});
      const ws = this.workspaceId();
      this.servers = r.servers.filter((s) => s.scope === "global" || s.workspaceId === ws);
      this.problem = undefined;
    } catch (e) {
      this.servers = [];
      this.problem = `Cannot read the MCP servers: ${e instanceof Error ? e.message : String(e)}`;
    }
    this.changed.fire(undefined);
    return this.servers;
  }

  /** Restarts a server (`mcp/restart`) and shows its new state. */
  async restart(node: McpNode | undefined): Promise<McpServerInfo | undefined> {
    const info = node?.kind === "server" ? node.info : await this.pick();
    if (!info) {
      return undefined;
    }
    const params = info.scope === "project" ? { name: info.name, workspaceId: info.workspaceId } : { name: info.name };
    const restarted = await this.client.request("mcp/restart", params);
    await this.refresh();
    return restarted;
  }

  private async pick(): Promise<McpServerInfo | undefined> {
    const servers = await this.refresh();
    const choice = await vscode.window.showQuickPick(
      servers.map((s) => ({ label: s.name, description: s.state, info: s })),
      { placeHolder: "Restart which MCP server?" },
    );
    return choice?.info;
  }

  getChildren(node?: McpNode): McpNode[] {
    if (!node) {
      if (this.problem) {
        return [{ kind: "note", text: this.problem }];
      }
      if (this.servers.length === 0) {
        return [{ kind: "note", text: "No MCP servers: add [mcp.servers.NAME] to config.toml or a .mcp.json to the workspace." }];
      }
      return this.servers.map((info) => ({ kind: "server", info }));
    }
    if (node.kind !== "server") {
      return [];
    }
    const s = node.info;
    return [
      ...s.tools.map((name): McpNode => ({ kind: "tool", server: s.name, name })),
      ...(s.rejectedTools ?? []).map((t): McpNode => ({ kind: "tool", server: s.name, name: t.name, rejected: t.reason })),
    ];
  }

  getTreeItem(node: McpNode): vscode.TreeItem {
    switch (node.kind) {
      case "note": {
        const item = new vscode.TreeItem(node.text, vscode.TreeItemCollapsibleState.None);
        item.tooltip = node.text;
        return item;
      }
      case "tool": {
        const item = new vscode.TreeItem(node.name, vscode.TreeItemCollapsibleState.None);
        item.description = node.rejected ? `not offered: ${node.rejected}` : undefined;
        item.tooltip = node.rejected ?? `mcp__${node.server}__${node.name}`;
        item.iconPath = new vscode.ThemeIcon(node.rejected ? "warning" : "tools");
        return item;
      }
      case "server":
        return serverItem(node.info);
    }
  }
}

/** A server's row: name, state and tool count; the last error and command in its tooltip. */
export function serverItem(s: McpServerInfo): vscode.TreeItem {
  const hasTools = s.tools.length + (s.rejectedTools?.length ?? 0) > 0;
  const item = new vscode.TreeItem(
    s.name,
    hasTools ? vscode.TreeItemCollapsibleState.Collapsed : vscode.TreeItemCollapsibleState.None,
  );
  const tools = s.state === "ready" ? `, ${s.toolCount} tool${s.toolCount === 1 ? "" : "s"}` : "";
  item.description = `${s.state}${tools}${s.scope === "project" ? " · .mcp.json" : ""}`;
  const lines = [`${s.name} (${s.scope}): ${s.state}`, s.command];
  if (s.serverName) {
    lines.push(`${s.serverName} ${s.serverVersion ?? ""} · MCP ${s.protocolVersion ?? "?"}`.trim());
  }
  if (s.lastError) {
    lines.push(`Last error: ${s.lastError}`);
  }
  if (s.restarts > 0) {
    lines.push(`Restarted ${s.restarts} time${s.restarts === 1 ? "" : "s"}`);
  }
  item.tooltip = lines.join("\n");
  item.iconPath = new vscode.ThemeIcon(STATE_ICONS[s.state] ?? "circle-outline");
  item.contextValue = s.state === "disabled" || s.state === "unapproved" ? "mcpServerInert" : "mcpServer";
  return item;
}
