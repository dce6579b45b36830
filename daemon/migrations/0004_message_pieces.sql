-- A streaming flush appends what arrived since the previous flush as one piece, instead of
-- rewriting the whole message: the bytes written for a reply then grow with its length, not
-- with its square. A message's text is its `parts` followed by its pieces in `id` order; the
-- final write of the message (or recovery after a crash) folds the pieces into `parts` and
-- deletes them, so finished messages have none.
CREATE TABLE message_pieces (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    -- Text appended to the message's last part (a text or reasoning part) before `parts`.
    extend TEXT,
    -- JSON array of whole parts appended after it.
    parts TEXT NOT NULL
) STRICT;

CREATE INDEX message_pieces_by_message ON message_pieces (message_id, id);
