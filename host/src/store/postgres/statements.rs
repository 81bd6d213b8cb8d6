//! PostgreSQL's text of the statements both backends run alike
//! (`store::queries`).

use crate::store::queries::Sql;

/// The columns of a deployment joined with its blob's size.
macro_rules! deployments {
    () => {
        "SELECT d.id, d.name, d.hash, d.kind, d.mode, d.source, b.size, d.deployed_at \
         FROM plugin_deployments d JOIN plugin_blobs b ON b.hash = d.hash"
    };
}

/// The columns of a saga instance.
macro_rules! instance_columns {
    () => {
        "saga, instance, state, status, done, next_step, awaited_position, created_at, updated_at"
    };
}
pub(super) use instance_columns;

/// The columns of a saga command.
macro_rules! command_columns {
    () => {
        "saga, instance, step, aggregate, aggregate_id, command_type, data, metadata, \
         compensating, attempts, errors, created_at, idempotency_key"
    };
}
pub(super) use command_columns;

pub const SQL: Sql = Sql {
    view_get: "SELECT value FROM view_rows WHERE projection = $1 AND generation = $2 AND key = $3",
    plugin_bytes: "SELECT bytes FROM plugin_blobs WHERE hash = $1",
    view_scan: "SELECT key, value FROM view_rows WHERE projection = $1 AND generation = $2 \
         AND key >= $3 AND ($4::text IS NULL OR key > $4) AND ($5::text IS NULL OR key < $5) \
         ORDER BY key LIMIT $6",
    generations: "SELECT name, generation, plugin_hash, role, position FROM projection_generations \
         ORDER BY name, generation",
    save_generation: "INSERT INTO projection_generations (name, generation, plugin_hash, role, position, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name, generation) DO UPDATE SET \
         role = excluded.role, plugin_hash = excluded.plugin_hash",
    // Locks the promoted row: two hosts promoting at once take turns.
    find_generation: "SELECT generation FROM projection_generations WHERE name = $1 AND generation = $2 \
         FOR UPDATE",
    retire_active: "UPDATE projection_generations SET role = 'retired' \
         WHERE name = $1 AND role = 'active' AND generation <> $2",
    activate_generation: "UPDATE projection_generations SET role = 'active' WHERE name = $1 AND generation = $2",
    drop_rows: "DELETE FROM view_rows WHERE projection = $1 AND generation = $2 AND key IN \
         (SELECT key FROM view_rows WHERE projection = $1 AND generation = $2 ORDER BY key LIMIT $3)",
    delete_generation: "DELETE FROM projection_generations WHERE name = $1 AND generation = $2",
    skips: "SELECT generation, position, stream_id, event_type, reason FROM projection_skips \
         WHERE name = $1 ORDER BY skipped_at DESC, position DESC",
    insert_blob: "INSERT INTO plugin_blobs (hash, bytes, size, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (hash) DO NOTHING",
    insert_deployment: "INSERT INTO plugin_deployments (name, hash, kind, mode, source, deployed_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    plugin_history: concat!(deployments!(), " WHERE d.name = $1 ORDER BY d.id DESC"),
    latest_deployments: concat!(
        deployments!(),
        " WHERE d.id IN (SELECT MAX(id) FROM plugin_deployments GROUP BY name) ORDER BY d.name"
    ),
    insert_removal: "INSERT INTO plugin_deployments (name, hash, kind, mode, source, deployed_at) \
         SELECT name, hash, kind, 'removed', $2::text, $3::bigint FROM plugin_deployments \
         WHERE id = (SELECT MAX(id) FROM plugin_deployments WHERE name = $1) AND mode <> 'removed' \
         RETURNING id",
    deployment: concat!(deployments!(), " WHERE d.id = $1"),
    release_lease: "DELETE FROM leases WHERE name = $1 AND holder = $2",
    leases: "SELECT name, holder, expires_at FROM leases ORDER BY name",
    purge_history: "DELETE FROM saga_history WHERE id IN (\
         SELECT h.id FROM saga_instances i \
         JOIN saga_history h ON h.saga = i.saga AND h.instance = i.instance \
         WHERE i.status = 'completed' AND i.updated_at < $1 LIMIT $2)",
    saga_checkpoint: "SELECT position FROM saga_checkpoints WHERE saga = $1",
    open_instances: concat!(
        "SELECT ",
        instance_columns!(),
        " FROM saga_instances WHERE saga = $1 AND status <> $2 ORDER BY instance"
    ),
    saga_outbox: concat!(
        "SELECT ",
        command_columns!(),
        " FROM saga_outbox WHERE saga = $1 ORDER BY instance, step"
    ),
    saga_timers: "SELECT instance, name, fire_at FROM saga_timers WHERE saga = $1 \
         ORDER BY instance, name",
    instance: concat!(
        "SELECT ",
        instance_columns!(),
        " FROM saga_instances WHERE saga = $1 AND instance = $2"
    ),
    instance_outbox: concat!(
        "SELECT ",
        command_columns!(),
        " FROM saga_outbox WHERE saga = $1 AND instance = $2 ORDER BY step"
    ),
    history: "SELECT at, entry FROM saga_history WHERE saga = $1 AND instance = $2 \
         ORDER BY id DESC LIMIT $3",
    status_counts: "SELECT status, count(*) AS count FROM saga_instances WHERE saga = $1 \
         GROUP BY status",
    pending_counts: "SELECT (SELECT count(*) FROM saga_outbox WHERE saga = $1), \
         (SELECT count(*) FROM saga_dead_letters WHERE saga = $1)",
    dead_letters: concat!(
        "SELECT id, ",
        command_columns!(),
        ", dead_at FROM saga_dead_letters WHERE id > $1 ORDER BY id LIMIT $2"
    ),
    dead_letter: concat!(
        "SELECT id, ",
        command_columns!(),
        ", dead_at FROM saga_dead_letters WHERE id = $1"
    ),
};
