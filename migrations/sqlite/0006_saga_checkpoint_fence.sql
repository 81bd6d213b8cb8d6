-- The fence of a saga commit, checked inside the commit's own statements
-- rather than by a query before them (a round trip to the connection's
-- thread for every saga commit). Inserting (saga, expected) into this view
-- does nothing when the saga's checkpoint is `expected` (0: none yet) and
-- otherwise aborts the statement with the message the store recognises;
-- the commit's other statements come after it, so none of them runs.
CREATE VIEW saga_checkpoint_fence (saga, expected) AS SELECT NULL, NULL WHERE false;

CREATE TRIGGER saga_checkpoint_fence_check INSTEAD OF INSERT ON saga_checkpoint_fence
WHEN coalesce((SELECT position FROM saga_checkpoints WHERE saga = NEW.saga), 0) <> NEW.expected
BEGIN
    SELECT RAISE(ABORT, 'kiln: saga checkpoint moved');
END;
