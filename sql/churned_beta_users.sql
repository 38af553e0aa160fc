-- Beta testers whose account has churned: removed from the `beta-testers` segment as they appear.
SELECT u.user_id AS context_key
FROM users AS u
JOIN accounts AS a USING (account_id)
WHERE u.beta_opt_in
  AND a.churned
  AND u.user_id IS NOT NULL
