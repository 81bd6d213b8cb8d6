-- One snapshot per (stream, plugin hash); an older one never replaces a newer one.
INSERT INTO snapshots (stream_id, plugin_hash, version, state, taken_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (stream_id, plugin_hash) DO UPDATE SET
    version = excluded.version,
    state = excluded.state,
    taken_at = excluded.taken_at
WHERE excluded.version > snapshots.version
