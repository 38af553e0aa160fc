-- Live enterprise accounts with more than 50 seats, keyed by account: the `organization` context kind.
SELECT account_id AS context_key, name, seats
FROM accounts
WHERE plan = 'enterprise'
  AND seats > 50
  AND NOT churned
