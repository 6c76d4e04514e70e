-- The W3C trace context of the request that wrote the event, sent with the
-- record as its `traceparent` header so the consumer continues the trace.
ALTER TABLE outbox ADD COLUMN traceparent text;
