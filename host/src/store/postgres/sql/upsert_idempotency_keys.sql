-- The idempotency entries of a batch (one per key). An existing entry of the
-- key has expired (the writer checked) and is replaced.
INSERT INTO idempotency_keys
    (key, request_hash, stream_id, version, first_position, event_count, created_at)
SELECT * FROM UNNEST(
    $1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[]
)
ON CONFLICT (key) DO UPDATE SET
    request_hash = excluded.request_hash,
    stream_id = excluded.stream_id,
    version = excluded.version,
    first_position = excluded.first_position,
    event_count = excluded.event_count,
    created_at = excluded.created_at
