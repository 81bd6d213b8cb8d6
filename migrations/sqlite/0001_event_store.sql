-- The append-only event log. `position` is the global order, assigned by the
-- single writer, gap-free; `hash` chains each event to the previous one.
CREATE TABLE events (
    position     INTEGER PRIMARY KEY,
    stream_id    TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    event_type   TEXT    NOT NULL,
    schema       INTEGER NOT NULL,
    data         TEXT    NOT NULL,
    metadata     TEXT    NOT NULL,
    recorded_at  INTEGER NOT NULL, -- microseconds since the Unix epoch
    hash         BLOB    NOT NULL,
    UNIQUE (stream_id, version)
);

CREATE INDEX events_by_type ON events (event_type, position);

-- State folded by one version of an aggregate plugin (keyed by its content
-- hash): new logic never reads state folded by old logic.
CREATE TABLE snapshots (
    stream_id    TEXT    NOT NULL,
    plugin_hash  TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    state        BLOB    NOT NULL,
    taken_at     INTEGER NOT NULL,
    PRIMARY KEY (stream_id, plugin_hash)
);

-- Results of commands that carried an Idempotency-Key, written in the same
-- transaction as their events.
CREATE TABLE idempotency_keys (
    key            TEXT    PRIMARY KEY,
    request_hash   TEXT    NOT NULL,
    stream_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    first_position INTEGER,
    event_count    INTEGER NOT NULL,
    created_at     INTEGER NOT NULL -- microseconds since the Unix epoch
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
