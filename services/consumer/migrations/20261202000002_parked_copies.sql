-- What a parked record needs to be copied to the retry topic again when its
-- copy is lost (retention, a recreated topic, a reset group): the record as
-- it was consumed, without failure headers, and where its retries stand.
-- Rows parked before this migration have no record and are not copied
-- again; an operator can dead-letter them (docs/delivery.md).
ALTER TABLE parked_records
    ADD COLUMN record_value  bytea,
    ADD COLUMN header_names  text[]      NOT NULL DEFAULT '{}',
    ADD COLUMN header_values bytea[]     NOT NULL DEFAULT '{}',
    ADD COLUMN round         integer     NOT NULL DEFAULT 0,
    ADD COLUMN attempts      integer     NOT NULL DEFAULT 0,
    -- When the latest copy on the retry topic is due.
    ADD COLUMN due_at        timestamptz NOT NULL DEFAULT now();
