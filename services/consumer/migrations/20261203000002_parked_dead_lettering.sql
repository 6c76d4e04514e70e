-- A parked record's dead-lettering, recorded before its dead-letter copy
-- is produced. A member that takes the partition after the copy but before
-- the record is unparked (a revoke or a crash in between) finishes the
-- dead-lettering instead of trying the record again: it never applies a
-- record it dead-lettered, and produces the copy only if it is not on the
-- dead-letter topic yet.
ALTER TABLE parked_records
    ADD COLUMN dead_letter_class    text,
    ADD COLUMN dead_letter_attempts integer,
    ADD COLUMN dead_letter_reason   text,
    ADD COLUMN dead_lettered_at     timestamptz;
