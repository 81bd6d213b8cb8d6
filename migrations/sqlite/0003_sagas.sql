-- Sagas: each saga's checkpoint in the global log, its instances, the
-- commands they decided (the outbox), their timers, the history of their
-- steps, and commands that exhausted their attempts (dead letters). A saga
-- batch's checkpoint, instance states and outbox rows commit in one
-- transaction.

CREATE TABLE saga_checkpoints (
    saga        TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL    -- the last global position processed
);

CREATE TABLE saga_instances (
    saga              TEXT    NOT NULL,
    instance          TEXT    NOT NULL,
    state             BLOB    NOT NULL,
    status            TEXT    NOT NULL, -- running | compensating | completed | failed
    done              INTEGER NOT NULL, -- the plugin said it is done
    next_step         INTEGER NOT NULL, -- the step number of its next command
    awaited_position  INTEGER NOT NULL, -- the last event its applied commands produced
    created_at        INTEGER NOT NULL, -- microseconds since the Unix epoch
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (saga, instance)
) WITHOUT ROWID;

CREATE INDEX saga_instances_by_status ON saga_instances (saga, status);

-- Commands decided and not applied yet. Dispatched in step order per instance.
CREATE TABLE saga_outbox (
    saga          TEXT    NOT NULL,
    instance      TEXT    NOT NULL,
    step          INTEGER NOT NULL,
    aggregate     TEXT    NOT NULL,
    aggregate_id  TEXT    NOT NULL,
    command_type  TEXT    NOT NULL,
    data          TEXT    NOT NULL, -- JSON
    metadata      TEXT    NOT NULL, -- JSON object
    compensating  INTEGER NOT NULL,
    attempts      INTEGER NOT NULL,
    errors        TEXT    NOT NULL, -- JSON array of the failed attempts
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (saga, instance, step)
) WITHOUT ROWID;

CREATE TABLE saga_timers (
    saga      TEXT    NOT NULL,
    instance  TEXT    NOT NULL,
    name      TEXT    NOT NULL,
    fire_at   INTEGER NOT NULL, -- milliseconds since the Unix epoch
    PRIMARY KEY (saga, instance, name)
) WITHOUT ROWID;

CREATE TABLE saga_history (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    saga      TEXT    NOT NULL,
    instance  TEXT    NOT NULL,
    at        INTEGER NOT NULL, -- microseconds since the Unix epoch
    entry     TEXT    NOT NULL  -- JSON
);

CREATE INDEX saga_history_by_instance ON saga_history (saga, instance, id);

CREATE TABLE saga_dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    saga          TEXT    NOT NULL,
    instance      TEXT    NOT NULL,
    step          INTEGER NOT NULL,
    aggregate     TEXT    NOT NULL,
    aggregate_id  TEXT    NOT NULL,
    command_type  TEXT    NOT NULL,
    data          TEXT    NOT NULL,
    metadata      TEXT    NOT NULL,
    compensating  INTEGER NOT NULL,
    attempts      INTEGER NOT NULL,
    errors        TEXT    NOT NULL, -- JSON array of the failed attempts
    created_at    INTEGER NOT NULL,
    dead_at       INTEGER NOT NULL
);
