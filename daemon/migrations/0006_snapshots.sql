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

-- Reverts: `session/revert` put the files back as they were before a message's run and hid
-- the messages from there on from the model (they stay stored, flagged with the revert's id).
-- `state`: `active` (can be undone by `session/unrevert`), `undone`, or `final` (a prompt was
-- sent since).
CREATE TABLE reverts (
    id           TEXT PRIMARY KEY NOT NULL,
    session_id   TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    message_id   TEXT NOT NULL,
    -- The first message hidden.
    from_seq     INTEGER NOT NULL,
    -- The workspace just before the revert (what `session/unrevert` puts back) and what the
    -- revert wrote, as snapshot trees; the paths it restored (JSON array).
    undo_tree    TEXT,
    target_tree  TEXT,
    paths        TEXT NOT NULL DEFAULT '[]',
    state        TEXT NOT NULL CHECK (state IN ('active', 'undone', 'final')),
    created_at   INTEGER NOT NULL
) STRICT;

CREATE INDEX reverts_by_session ON reverts(session_id, created_at);

ALTER TABLE messages ADD COLUMN reverted_by TEXT;
