-- "Always allow" answers saved as rules (issue 24), so they survive a daemon restart. A rule
-- allows calls of `tool` whose command starts with `pattern`'s words (`bash`) or whose path
-- matches the glob `pattern` (file tools); no pattern allows every call of the tool. Its scope
-- says where: one session, one workspace, or everywhere; a deleted session or workspace takes
-- its rules with it.
CREATE TABLE permission_rules (
    id            TEXT PRIMARY KEY NOT NULL,
    scope         TEXT NOT NULL CHECK (scope IN ('session', 'workspace', 'global')),
    workspace_id  TEXT REFERENCES workspaces(id) ON DELETE CASCADE,
    session_id    TEXT REFERENCES sessions(id) ON DELETE CASCADE,
    tool          TEXT NOT NULL,
    pattern       TEXT,
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    CHECK ((scope = 'global') = (workspace_id IS NULL)),
    CHECK ((scope = 'session') = (session_id IS NOT NULL))
) STRICT;

-- Every permission decision: who answered (client name and connection) or which rule let the
-- call run. Kept after its session is deleted (no foreign keys): it is an audit trail. Bounded
-- by the daemon (the oldest rows go past `LOG_KEEP` in store/permissions.rs).
CREATE TABLE permission_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    session_id    TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    tool_call_id  TEXT NOT NULL,
    tool          TEXT NOT NULL,
    title         TEXT NOT NULL,
    decision      TEXT NOT NULL CHECK (decision IN
                    ('allow', 'allowSession', 'allowAlways', 'deny', 'cancelled')),
    source        TEXT NOT NULL CHECK (source IN
                    ('prompt', 'yolo', 'config', 'sessionGrant', 'rule', 'mcpAllow')),
    rule          TEXT,
    rule_id       TEXT,
    client        TEXT,
    connection    INTEGER
) STRICT;
CREATE INDEX permission_log_session ON permission_log (session_id, id);
CREATE INDEX permission_log_workspace ON permission_log (workspace_id, id);
