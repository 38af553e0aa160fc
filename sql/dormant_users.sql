-- Users who have not been active for 30 days as of the snapshot: targets of the win-back experiment.
-- Added to the `winback` segment as they go quiet; the experiment itself decides when they leave.
SELECT user_id AS context_key
FROM users
WHERE user_id IS NOT NULL
  AND trim(user_id) <> ''
  AND last_active_date < (SELECT max(last_active_date) FROM users) - INTERVAL 30 DAY
