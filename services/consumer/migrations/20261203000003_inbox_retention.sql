-- Retention deletes applied events' ids older than inbox.retention, oldest
-- sequence first, and records here the highest sequence it deleted: the
-- live feed cannot replay from before it, and says so.
CREATE TABLE inbox_pruned (
    -- One row.
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    through bigint  NOT NULL
);
