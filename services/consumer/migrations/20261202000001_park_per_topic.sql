-- Records are parked behind earlier records of the same key from the same
-- topic only: the topics are not ordered against each other, and a user's
-- `user.created` must not wait behind the user's parked token, which waits
-- for it (docs/delivery.md).
DROP INDEX parked_records_by_key;
CREATE INDEX parked_records_by_key ON parked_records (origin_topic, record_key, id);
