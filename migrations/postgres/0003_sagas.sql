-- Sagas: each saga's checkpoint in the global log, its instances, the
-- commands they decided (the outbox), their timers, the history of their
-- steps, and commands that exhausted their attempts (dead letters). A saga
-- batch's checkpoint, instance states and outbox rows commit in one
-- transaction. As migrations/sqlite/0003_sagas.sql.

CREATE TABLE saga_checkpoints (
    saga        text    COLLATE "C" PRIMARY KEY,
    position    bigint  NOT NULL    -- the last global position processed
);

CREATE TABLE saga_instances (
    saga              text    COLLATE "C" NOT NULL,
    instance          text    COLLATE "C" NOT NULL,
    state             bytea   NOT NULL,
    status            text    NOT NULL, -- running | compensating | completed | failed
    done              boolean NOT NULL, -- the plugin said it is done
    next_step         bigint  NOT NULL, -- the step number of its next command
    awaited_position  bigint  NOT NULL, -- the last event its applied commands produced
    created_at        bigint  NOT NULL, -- microseconds since the Unix epoch
    updated_at        bigint  NOT NULL,
    PRIMARY KEY (saga, instance)
);

CREATE INDEX saga_instances_by_status ON saga_instances (saga, status);

-- Commands decided and not applied yet. Dispatched in step order per instance.
CREATE TABLE saga_outbox (
    saga          text    COLLATE "C" NOT NULL,
    instance      text    COLLATE "C" NOT NULL,
    step          bigint  NOT NULL,
    aggregate     text    NOT NULL,
    aggregate_id  text    NOT NULL,
    command_type  text    NOT NULL,
    data          text    NOT NULL, -- JSON
    metadata      text    NOT NULL, -- JSON object
    compensating  boolean NOT NULL,
    attempts      bigint  NOT NULL,
    errors        text    NOT NULL, -- JSON array of the failed attempts
    created_at    bigint  NOT NULL,
    PRIMARY KEY (saga, instance, step)
);

CREATE TABLE saga_timers (
    saga      text    COLLATE "C" NOT NULL,
    instance  text    COLLATE "C" NOT NULL,
    name      text    COLLATE "C" NOT NULL,
    fire_at   bigint  NOT NULL, -- milliseconds since the Unix epoch
    PRIMARY KEY (saga, instance, name)
);

CREATE TABLE saga_history (
    id        bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga      text    COLLATE "C" NOT NULL,
    instance  text    COLLATE "C" NOT NULL,
    at        bigint  NOT NULL, -- microseconds since the Unix epoch
    entry     text    NOT NULL  -- JSON
);

CREATE INDEX saga_history_by_instance ON saga_history (saga, instance, id);

CREATE TABLE saga_dead_letters (
    id            bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga          text    COLLATE "C" NOT NULL,
    instance      text    COLLATE "C" NOT NULL,
    step          bigint  NOT NULL,
    aggregate     text    NOT NULL,
    aggregate_id  text    NOT NULL,
    command_type  text    NOT NULL,
    data          text    NOT NULL,
    metadata      text    NOT NULL,
    compensating  boolean NOT NULL,
    attempts      bigint  NOT NULL,
    errors        text    NOT NULL, -- JSON array of the failed attempts
    created_at    bigint  NOT NULL,
    dead_at       bigint  NOT NULL
);

CREATE INDEX saga_dead_letters_by_saga ON saga_dead_letters (saga);
