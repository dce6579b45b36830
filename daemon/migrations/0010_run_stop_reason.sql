-- Which of the daemon's limits stopped a run (`RunInfo.stopReason`, `$/runComplete`'s
-- `stopReason`): `maxSteps`; NULL for every other ending.
ALTER TABLE runs ADD COLUMN stop_reason TEXT;
