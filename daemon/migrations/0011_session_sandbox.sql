-- A session's own sandbox choice (`session/setSandbox`), kept across restarts: the mode
-- (`workspace-write`, `read-only`, `off`) and whether bash may use the network; NULL follows the
-- config's `[sandbox]`.
ALTER TABLE sessions ADD COLUMN sandbox_mode TEXT;
ALTER TABLE sessions ADD COLUMN sandbox_network INTEGER;
