-- A run's accepted user parts are needed only until its user message is written (crash
-- recovery of a run that never started); from then on the message holds them. Runs started
-- before this version still carry a copy (an image prompt's base64 among it): drop it.
UPDATE runs SET user_parts = NULL WHERE user_message_id IS NOT NULL;
