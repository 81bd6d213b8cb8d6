-- Leases: which host runs each projection and saga when several hosts
-- share one database. A lease is free when its row is missing or expired;
-- its holder renews it well before it expires. As
-- migrations/postgres/0004_leases.sql.

CREATE TABLE leases (
    name        TEXT    PRIMARY KEY, -- projection:<name> | saga:<name>
    holder      TEXT    NOT NULL,    -- the holding host's id
    expires_at  INTEGER NOT NULL     -- microseconds since the Unix epoch
);
