-- The live feed (GET /events/stream) replays applied events from here by
-- `sequence` after a reconnect, with the event's own time.
ALTER TABLE processed_events ADD COLUMN event_time timestamptz;
CREATE UNIQUE INDEX processed_events_by_sequence ON processed_events (sequence);
