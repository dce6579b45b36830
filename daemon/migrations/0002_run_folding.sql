-- A steered run that joined another run's turn names that run.
ALTER TABLE runs ADD COLUMN folded_into TEXT;
