-- The end of the log, locked until the transaction ends. Every transaction
-- that appends, on any host, takes this lock first: appends are serialised,
-- so they commit (and become visible) in position order, and the tail read
-- here is the one the last commit left, whichever host made it.
SELECT position, hash, recorded_at FROM log_tail FOR UPDATE
