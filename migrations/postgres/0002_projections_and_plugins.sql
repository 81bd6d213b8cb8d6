-- Plugin versions, content-addressed: every host of a cluster runs the same bytes.
CREATE TABLE plugin_blobs (
    hash        text    COLLATE "C" PRIMARY KEY, -- sha256:<hex> of the bytes
    bytes       bytea   NOT NULL,
    size        bigint  NOT NULL,
    created_at  bigint  NOT NULL                 -- microseconds since the Unix epoch
);

-- Every deployment of a plugin name, oldest first; the last one is current.
CREATE TABLE plugin_deployments (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text    COLLATE "C" NOT NULL,
    hash        text    COLLATE "C" NOT NULL REFERENCES plugin_blobs (hash),
    kind        text    NOT NULL,
    mode        text    NOT NULL,    -- live | shadow | rollback
    source      text    NOT NULL,    -- upload | directory
    deployed_at bigint  NOT NULL
);

CREATE INDEX plugin_deployments_by_name ON plugin_deployments (name, id);

-- Generations of projection views. `position` is the checkpoint: the last
-- global position the generation has processed, written in the same
-- transaction as the view rows it produced.
CREATE TABLE projection_generations (
    name         text    COLLATE "C" NOT NULL,
    generation   bigint  NOT NULL,
    plugin_hash  text    NOT NULL,
    role         text    NOT NULL,   -- active | building | shadow | retired
    position     bigint  NOT NULL,
    created_at   bigint  NOT NULL,
    PRIMARY KEY (name, generation)
);

-- View rows, per projection generation. Keys sort by bytes ("C"), so a
-- prefix is one range of the primary key.
CREATE TABLE view_rows (
    projection  text    COLLATE "C" NOT NULL,
    generation  bigint  NOT NULL,
    key         text    COLLATE "C" NOT NULL,
    value       bytea   NOT NULL,
    PRIMARY KEY (projection, generation, key)
);

-- Events an operator chose to skip after they poisoned a projection.
CREATE TABLE projection_skips (
    name        text    COLLATE "C" NOT NULL,
    generation  bigint  NOT NULL,
    position    bigint  NOT NULL,
    stream_id   text    NOT NULL,
    event_type  text    NOT NULL,
    reason      text    NOT NULL,
    skipped_at  bigint  NOT NULL,
    PRIMARY KEY (name, generation, position)
);
