-- A run is written when it is accepted, before agent/send answers. Its user message's parts
-- (JSON array: the prompt and its attachments) are kept on the row, so that a run the daemon
-- accepted but never started can still put its prompt in the session after a crash.
ALTER TABLE runs ADD COLUMN user_parts TEXT;
