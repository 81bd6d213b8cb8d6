-- The append-only event log, as in migrations/sqlite/0001_event_store.sql.
-- `position` is the global order, gap-free: every transaction that appends
-- locks the one row of `log_tail` first and takes its positions from it, so
-- transactions append (and become visible) one after the other, in position
-- order (docs/design.md, "PostgreSQL: one global order for several hosts").
-- `hash` chains each event to the previous one.
--
-- Text that is sorted or compared as a key uses the "C" collation: byte
-- order, as SQLite compares, whatever the database's default collation.
CREATE TABLE events (
    position     bigint  PRIMARY KEY,
    stream_id    text    COLLATE "C" NOT NULL,
    version      bigint  NOT NULL,
    event_type   text    COLLATE "C" NOT NULL,
    schema       bigint  NOT NULL,
    data         text    NOT NULL,
    metadata     text    NOT NULL,
    recorded_at  bigint  NOT NULL, -- microseconds since the Unix epoch
    hash         bytea   NOT NULL,
    UNIQUE (stream_id, version)
);

CREATE INDEX events_by_type ON events (event_type, position);

-- The end of the log: the last position, its hash and its recorded time.
-- Exactly one row. Its row lock serialises appending transactions across
-- every host on the database, and it is updated in the same transaction as
-- the events it describes.
CREATE TABLE log_tail (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    position     bigint  NOT NULL,
    hash         bytea   NOT NULL,
    recorded_at  bigint  NOT NULL
);

INSERT INTO log_tail (id, position, hash, recorded_at)
VALUES (true, 0, decode(repeat('00', 32), 'hex'), 0);

-- State folded by one version of an aggregate plugin (keyed by its content
-- hash): new logic never reads state folded by old logic.
CREATE TABLE snapshots (
    stream_id    text    COLLATE "C" NOT NULL,
    plugin_hash  text    COLLATE "C" NOT NULL,
    version      bigint  NOT NULL,
    state        bytea   NOT NULL,
    taken_at     bigint  NOT NULL,
    PRIMARY KEY (stream_id, plugin_hash)
);

-- Results of commands that carried an Idempotency-Key, written in the same
-- transaction as their events.
CREATE TABLE idempotency_keys (
    key            text    COLLATE "C" PRIMARY KEY,
    request_hash   text    NOT NULL,
    stream_id      text    NOT NULL,
    version        bigint  NOT NULL,
    first_position bigint,
    event_count    bigint  NOT NULL,
    created_at     bigint  NOT NULL -- microseconds since the Unix epoch
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
