-- Orders and plan upgrades as metric events for experiments: `order-completed` carries the order's amount (a
-- numeric metric), `plan-upgraded` none (a conversion metric). The `order-events` sync sends each row once.
SELECT order_id, event AS event_key, user_id, placed_at, amount
FROM orders
