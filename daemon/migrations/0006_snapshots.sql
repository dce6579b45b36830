-- Snapshots of a workspace's files taken during a session's runs (the trees are in the
-- workspace's shadow Git store, `<data dir>/snapshots/<workspace id>.git`): one `before` the
-- first step of a turn whose tools may change files, one `after` each such step.
CREATE TABLE snapshots (
    id          INTEGER PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    run_id      TEXT NOT NULL,
    -- The turn's user message (`before`) or the step's assistant message (`after`).
    message_id  TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('before', 'after')),
    tree        TEXT NOT NULL,
    -- JSON array of the paths too large to record.
    skipped     TEXT NOT NULL DEFAULT '[]',
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX snapshots_by_session ON snapshots(session_id, id);
CREATE INDEX snapshots_by_run ON snapshots(run_id, id);
