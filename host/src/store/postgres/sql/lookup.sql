-- What a batch's staging needs, in one round trip while the log's lock is
-- held: the current version of each stream in $1 (0: no events yet; one
-- index probe per stream), in the order given, and the idempotency entries
-- of the keys in $2, column by column.
SELECT versions.versions,
       entries.keys, entries.request_hashes, entries.stream_ids, entries.versions,
       entries.first_positions, entries.event_counts, entries.created_ats
FROM (
    SELECT coalesce(array_agg(coalesce(
               (SELECT e.version FROM events e WHERE e.stream_id = s.stream_id
                ORDER BY e.version DESC LIMIT 1), 0) ORDER BY s.i), '{}') AS versions
    FROM UNNEST($1::text[]) WITH ORDINALITY AS s (stream_id, i)
) AS versions,
(
    SELECT coalesce(array_agg(k.key), '{}') AS keys,
           coalesce(array_agg(k.request_hash), '{}') AS request_hashes,
           coalesce(array_agg(k.stream_id), '{}') AS stream_ids,
           coalesce(array_agg(k.version), '{}') AS versions,
           coalesce(array_agg(k.first_position), '{}') AS first_positions,
           coalesce(array_agg(k.event_count), '{}') AS event_counts,
           coalesce(array_agg(k.created_at), '{}') AS created_ats
    FROM idempotency_keys k
    WHERE k.key = ANY($2::text[])
) AS entries
