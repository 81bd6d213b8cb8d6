-- A batch of appends: one call of kiln_append (migrations/postgres/
-- 0005_append_function.sql), sent outside any transaction so that it is its
-- own: the lock on the end of the log is released by its commit.
SELECT outcomes, versions, first_positions, hashes, recorded_at, tail_position,
       k_request_hash, k_stream_id, k_version, k_first_position, k_event_count, k_created_at
FROM kiln_append(
    $1::text[], $2::smallint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::integer[],
    $8::text[], $9::bigint[], $10::text[], $11::text[], $12::bigint, $13::text, $14::text
)
