-- crushd schema v1: workspaces, sessions, messages, runs.
-- Ids are UUID v7 text (time-ordered) unless a client supplied one; times are Unix milliseconds.

CREATE TABLE workspaces (
    id              TEXT PRIMARY KEY NOT NULL,
    path            TEXT NOT NULL UNIQUE,          -- canonical absolute path
    created_at      INTEGER NOT NULL,
    last_opened_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    id                 TEXT PRIMARY KEY NOT NULL,
    workspace_id       TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    title              TEXT NOT NULL,
    model              TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    message_count      INTEGER NOT NULL DEFAULT 0,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    cost               REAL NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX sessions_by_workspace ON sessions(workspace_id, updated_at DESC);

CREATE TABLE messages (
    id             TEXT PRIMARY KEY NOT NULL,
    session_id     TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    -- Orders messages within a session; assigned at insert, never reused.
    seq            INTEGER NOT NULL,
    run_id         TEXT,
    role           TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
    parts          TEXT NOT NULL DEFAULT '[]',     -- JSON array of parts
    model          TEXT,
    provider       TEXT,
    finish_reason  TEXT CHECK (finish_reason IN
                     ('end_turn', 'max_tokens', 'tool_use', 'canceled', 'error', 'interrupted')),
    error          TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    UNIQUE (session_id, seq)
) STRICT;

CREATE TABLE runs (
    run_id                TEXT PRIMARY KEY NOT NULL,
    session_id            TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    state                 TEXT NOT NULL CHECK (state IN
                            ('accepted', 'queued', 'running', 'completed', 'cancelled', 'failed', 'interrupted')),
    prompt                TEXT NOT NULL,
    error                 TEXT,
    user_message_id       TEXT REFERENCES messages(id) ON DELETE SET NULL,
    assistant_message_id  TEXT REFERENCES messages(id) ON DELETE SET NULL,
    created_at            INTEGER NOT NULL,
    started_at            INTEGER,
    finished_at           INTEGER
) STRICT;

CREATE INDEX runs_by_session ON runs(session_id, created_at);
CREATE INDEX runs_unfinished ON runs(state) WHERE state IN ('accepted', 'queued', 'running');
