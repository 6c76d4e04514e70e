-- Records parked on the retry topic, in the order they were parked. While a
-- key has a row here, later records with that key are parked behind it, so
-- per-key order survives retries (see docs/delivery.md). A row is deleted
-- when its record is applied or dead-lettered.
CREATE TABLE parked_records (
    id               bigserial   PRIMARY KEY,
    record_key       bytea,
    origin_topic     text        NOT NULL,
    origin_partition integer     NOT NULL,
    origin_offset    bigint      NOT NULL,
    reason           text        NOT NULL,
    parked_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (origin_topic, origin_partition, origin_offset)
);

CREATE INDEX parked_records_by_key ON parked_records (record_key, id);

-- The event's subject (the user id) and the order in which events were
-- applied (`sequence`), so per-key order can be checked after the fact.
-- `topic`, `partition` and `offset` are the record's origin, also for
-- records applied from the retry topic.
ALTER TABLE processed_events
    ADD COLUMN subject  text,
    ADD COLUMN sequence bigserial;
