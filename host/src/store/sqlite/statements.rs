//! SQLite's text of the statements both backends run alike
//! (`store::queries`).

use crate::store::queries::Sql;

/// The columns of a deployment joined with its blob's size.
macro_rules! deployments {
    () => {
        "SELECT d.id, d.name, d.hash, d.kind, d.mode, d.source, b.size, d.deployed_at \
         FROM plugin_deployments d JOIN plugin_blobs b ON b.hash = d.hash"
    };
}

/// The columns of a saga command.
macro_rules! command_columns {
    () => {
        "saga, instance, step, aggregate, aggregate_id, command_type, data, metadata, \
         compensating, attempts, errors, created_at, idempotency_key"
    };
}

pub const SQL: Sql = Sql {
    view_get: "SELECT value FROM view_rows WHERE projection = ? AND generation = ? AND key = ?",
    plugin_bytes: "SELECT bytes FROM plugin_blobs WHERE hash = ?",
    view_scan: "SELECT key, value FROM view_rows WHERE projection = ?1 AND generation = ?2 \
         AND key >= ?3 AND (?4 IS NULL OR key > ?4) AND (?5 IS NULL OR key < ?5) \
         ORDER BY key LIMIT ?6",
    generations: "SELECT name, generation, plugin_hash, role, position FROM projection_generations \
         ORDER BY name, generation",
    save_generation: "INSERT INTO projection_generations (name, generation, plugin_hash, role, position, created_at) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, generation) DO UPDATE SET \
         role = excluded.role, plugin_hash = excluded.plugin_hash",
    find_generation: "SELECT generation FROM projection_generations WHERE name = ? AND generation = ?",
    retire_active: "UPDATE projection_generations SET role = 'retired' \
         WHERE name = ? AND role = 'active' AND generation <> ?",
    activate_generation: "UPDATE projection_generations SET role = 'active' WHERE name = ? AND generation = ?",
    drop_rows: "DELETE FROM view_rows WHERE projection = ?1 AND generation = ?2 AND key IN \
         (SELECT key FROM view_rows WHERE projection = ?1 AND generation = ?2 ORDER BY key LIMIT ?3)",
    delete_generation: "DELETE FROM projection_generations WHERE name = ? AND generation = ?",
    skips: "SELECT generation, position, stream_id, event_type, reason FROM projection_skips \
         WHERE name = ? ORDER BY skipped_at DESC, position DESC",
    insert_blob: "INSERT INTO plugin_blobs (hash, bytes, size, created_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (hash) DO NOTHING",
    insert_deployment: "INSERT INTO plugin_deployments (name, hash, kind, mode, source, deployed_at) \
         VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    plugin_history: concat!(deployments!(), " WHERE d.name = ? ORDER BY d.id DESC"),
    latest_deployments: concat!(
        deployments!(),
        " WHERE d.id IN (SELECT MAX(id) FROM plugin_deployments GROUP BY name) ORDER BY d.name"
    ),
    insert_removal: "INSERT INTO plugin_deployments (name, hash, kind, mode, source, deployed_at) \
         SELECT name, hash, kind, 'removed', ?2, ?3 FROM plugin_deployments \
         WHERE id = (SELECT MAX(id) FROM plugin_deployments WHERE name = ?1) AND mode <> 'removed' \
         RETURNING id",
    deployment: concat!(deployments!(), " WHERE d.id = ?"),
    release_lease: "DELETE FROM leases WHERE name = ? AND holder = ?",
    leases: "SELECT name, holder, expires_at FROM leases ORDER BY name",
    purge_history: "DELETE FROM saga_history WHERE id IN (\
         SELECT h.id FROM saga_instances i \
         JOIN saga_history h ON h.instance_seq = i.seq \
         WHERE i.status = 'completed' AND i.updated_at < ? LIMIT ?)",
    saga_checkpoint: "SELECT position FROM saga_checkpoints WHERE saga = ?",
    open_instances: "SELECT * FROM saga_instances WHERE saga = ? AND status <> ?",
    saga_outbox: concat!(
        "SELECT ",
        command_columns!(),
        " FROM saga_outbox WHERE saga = ? ORDER BY instance, step"
    ),
    saga_timers: "SELECT instance, name, fire_at FROM saga_timers WHERE saga = ?",
    instance: "SELECT * FROM saga_instances WHERE saga = ? AND instance = ?",
    instance_outbox: concat!(
        "SELECT ",
        command_columns!(),
        " FROM saga_outbox WHERE saga = ? AND instance = ? ORDER BY step"
    ),
    history: "SELECT at, entry FROM saga_history WHERE instance_seq = \
         (SELECT seq FROM saga_instances WHERE saga = ? AND instance = ?) \
         ORDER BY id DESC LIMIT ?",
    status_counts: "SELECT status, count(*) AS count FROM saga_instances WHERE saga = ? GROUP BY status",
    pending_counts: "SELECT (SELECT count(*) FROM saga_outbox WHERE saga = ?1), \
         (SELECT count(*) FROM saga_dead_letters WHERE saga = ?1)",
    dead_letters: concat!(
        "SELECT id, ",
        command_columns!(),
        ", dead_at FROM saga_dead_letters WHERE id > ? ORDER BY id LIMIT ?"
    ),
    dead_letter: concat!(
        "SELECT id, ",
        command_columns!(),
        ", dead_at FROM saga_dead_letters WHERE id = ?"
    ),
};
