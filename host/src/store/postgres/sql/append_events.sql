-- A batch's events, its idempotency entries and the new end of the log in
-- one statement, with the notification other hosts wake on (PostgreSQL
-- delivers it at commit). $1..$9: the events' columns as arrays; $10..$12:
-- the new tail; $13: the channel; $14..$20: the entries' columns (see
-- upsert_idempotency_keys.sql), possibly empty; $21: the writing store's id,
-- which the payload starts with so that it can ignore its own commits.
WITH appended AS (
    INSERT INTO events
        (position, stream_id, version, event_type, schema, data, metadata, recorded_at, hash)
    SELECT * FROM UNNEST(
        $1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
        $6::text[], $7::text[], $8::bigint[], $9::bytea[]
    )
), claimed AS (
    INSERT INTO idempotency_keys
        (key, request_hash, stream_id, version, first_position, event_count, created_at)
    SELECT * FROM UNNEST(
        $14::text[], $15::text[], $16::text[], $17::bigint[], $18::bigint[], $19::bigint[],
        $20::bigint[]
    )
    ON CONFLICT (key) DO UPDATE SET
        request_hash = excluded.request_hash,
        stream_id = excluded.stream_id,
        version = excluded.version,
        first_position = excluded.first_position,
        event_count = excluded.event_count,
        created_at = excluded.created_at
), tail AS (
    UPDATE log_tail SET position = $10::bigint, hash = $11::bytea, recorded_at = $12::bigint
)
SELECT pg_notify($13::text, $21::text || ' ' || $10::bigint::text)
