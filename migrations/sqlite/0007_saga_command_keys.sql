-- Each saga command keeps the idempotency key it is dispatched with. New
-- commands' keys begin with the time they were decided, so that the keys a
-- writer batch adds sit together in the key index (saga::dispatch); the
-- commands already here keep the key they have been dispatched with.
ALTER TABLE saga_outbox ADD COLUMN idempotency_key TEXT NOT NULL DEFAULT '';
UPDATE saga_outbox SET idempotency_key = 'kiln-saga/' || saga || '/' || instance || '/' || step;

ALTER TABLE saga_dead_letters ADD COLUMN idempotency_key TEXT NOT NULL DEFAULT '';
UPDATE saga_dead_letters SET idempotency_key = 'kiln-saga/' || saga || '/' || instance || '/' || step;
