-- Forget keys used before $1, except the saga manager's (prefix $2), which
-- are kept until $3: a saga retried after a long outage must still find the
-- result of its command.
DELETE FROM idempotency_keys
WHERE created_at < $1 AND (NOT starts_with(key, $2) OR created_at < $3)
