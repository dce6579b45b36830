-- Usage and cost of every turn, and titles taken from a session's first prompt.
-- A run's tokens as the provider reported them, summed over its turn's steps, and their cost
-- in US dollars. All NULL until the turn's last write, and for a run folded into another's
-- turn (its tokens are that turn's). `cost` also NULL when the model's price was unknown.
ALTER TABLE runs ADD COLUMN input_tokens INTEGER;
ALTER TABLE runs ADD COLUMN output_tokens INTEGER;
ALTER TABLE runs ADD COLUMN cached_tokens INTEGER;
ALTER TABLE runs ADD COLUMN reasoning_tokens INTEGER;
ALTER TABLE runs ADD COLUMN cost REAL;
-- A session's totals beside `prompt_tokens`, `completion_tokens` and `cost` (which sums the
-- priced turns only): tokens spent at an unknown price make its total cost unknown.
ALTER TABLE sessions ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN unpriced_tokens INTEGER NOT NULL DEFAULT 0;
-- 1 while the session has the default title nobody chose: its first turn titles it from the
-- prompt (and clears this). A title given at creation or by session/rename is never replaced.
ALTER TABLE sessions ADD COLUMN auto_title INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET auto_title = 1 WHERE title = 'New session' AND message_count = 0;
