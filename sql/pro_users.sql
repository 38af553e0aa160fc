-- Users on a paid plan (pro or enterprise): the audience for paid-only features.
-- Mirrored into the `pro-users` segment, so users who downgrade leave it on the next sync.
SELECT user_id AS context_key
FROM users
WHERE plan IN ('pro', 'enterprise')
