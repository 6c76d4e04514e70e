-- no-transaction
-- Retention deletes published rows by publishing time (outbox.retention):
-- this index finds the oldest ones without reading the rest of the table.
-- Built CONCURRENTLY, so that running producers keep writing the outbox
-- while it is built (which cannot happen inside a transaction).
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_published ON outbox (published_at)
    WHERE published_at IS NOT NULL;
