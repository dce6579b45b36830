-- MCP servers a workspace's `.mcp.json` names run only once a client approved them for that
-- workspace (issue 19): a cloned repository must not run a program by being opened. An approval
-- is for one exact server definition (`spec`: canonical JSON of command, args, env and cwd), so
-- an edited `.mcp.json` asks again.
CREATE TABLE mcp_approvals (
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    spec          TEXT NOT NULL,
    approved_at   INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, name, spec)
) STRICT;
