-- A row the relay could not publish is retried with backoff, and holds back
-- the later rows of its key until it is published or set aside, so that no
-- record overtakes an earlier one of the same key.
ALTER TABLE outbox
    -- Failed publishing attempts; 0 while none failed.
    ADD COLUMN attempts         integer     NOT NULL DEFAULT 0,
    -- Why the last attempt failed.
    ADD COLUMN last_error       text,
    -- Not read again before this time (backoff after a failure).
    ADD COLUMN next_attempt_at  timestamptz,
    -- An operator set the row aside (`POST /outbox/{id}/set-aside`): it is
    -- never published, and its key's later rows flow again. The row stays
    -- as the record of it.
    ADD COLUMN set_aside_at     timestamptz,
    ADD COLUMN set_aside_reason text;

DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL AND set_aside_at IS NULL;
-- The relay's read looks up failing rows of each key it reads.
CREATE INDEX outbox_failing ON outbox (subject, id)
    WHERE published_at IS NULL AND set_aside_at IS NULL AND attempts > 0;
