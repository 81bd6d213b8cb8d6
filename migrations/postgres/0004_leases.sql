-- Leases: which host runs each projection and saga when several hosts
-- share one database. A lease is free when its row is missing or expired;
-- its holder renews it well before it expires. Expiry is judged by the
-- database's clock, so the hosts' clocks need not agree. As
-- migrations/sqlite/0004_leases.sql.

CREATE TABLE leases (
    name        text    COLLATE "C" PRIMARY KEY, -- projection:<name> | saga:<name>
    holder      text    NOT NULL,                -- the holding host's id
    expires_at  bigint  NOT NULL                 -- microseconds since the Unix epoch
);
