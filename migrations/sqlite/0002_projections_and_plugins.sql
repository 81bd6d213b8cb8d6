-- Plugin versions, content-addressed: every host of a cluster runs the same bytes.
CREATE TABLE plugin_blobs (
    hash        TEXT    PRIMARY KEY, -- sha256:<hex> of the bytes
    bytes       BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL     -- microseconds since the Unix epoch
);

-- Every deployment of a plugin name, oldest first; the last one is current.
CREATE TABLE plugin_deployments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    hash        TEXT    NOT NULL REFERENCES plugin_blobs (hash),
    kind        TEXT    NOT NULL,
    mode        TEXT    NOT NULL,    -- live | shadow | rollback
    source      TEXT    NOT NULL,    -- upload | directory
    deployed_at INTEGER NOT NULL
);

CREATE INDEX plugin_deployments_by_name ON plugin_deployments (name, id);

-- Generations of projection views. `position` is the checkpoint: the last
-- global position the generation has processed, written in the same
-- transaction as the view rows it produced.
CREATE TABLE projection_generations (
    name         TEXT    NOT NULL,
    generation   INTEGER NOT NULL,
    plugin_hash  TEXT    NOT NULL,
    role         TEXT    NOT NULL,   -- active | building | shadow | retired
    position     INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (name, generation)
);

-- View rows, per projection generation.
CREATE TABLE view_rows (
    projection  TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    value       BLOB    NOT NULL,
    PRIMARY KEY (projection, generation, key)
) WITHOUT ROWID;

-- Events an operator chose to skip after they poisoned a projection.
CREATE TABLE projection_skips (
    name        TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    stream_id   TEXT    NOT NULL,
    event_type  TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    skipped_at  INTEGER NOT NULL,
    PRIMARY KEY (name, generation, position)
);
