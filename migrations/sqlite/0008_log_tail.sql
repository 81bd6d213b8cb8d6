-- The log's tail as the writer recorded it with its last append, kept apart
-- from the events (as PostgreSQL's `log_tail` is): `kiln verify` compares
-- the last event with it, so that removing the last events of the log
-- shows, and a restarted writer goes on after it rather than reusing the
-- positions of removed events.
CREATE TABLE log_tail (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    position     INTEGER NOT NULL,
    hash         BLOB    NOT NULL,
    recorded_at  INTEGER NOT NULL
);

INSERT INTO log_tail (id, position, hash, recorded_at)
SELECT 1, position, hash, recorded_at FROM events
UNION ALL
SELECT 1, 0, zeroblob(32), 0
ORDER BY 2 DESC
LIMIT 1;
