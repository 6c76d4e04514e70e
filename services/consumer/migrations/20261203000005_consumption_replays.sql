-- Replays of an event topic from a time into this read model, through the
-- inbox (POST /consumption/replays): one member at a time runs each, under
-- a lease, and another takes it over when the lease lapses.
CREATE TABLE consumption_replays (
    id           bigserial   PRIMARY KEY,
    topic        text        NOT NULL,
    from_time    timestamptz NOT NULL,
    reason       text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    -- The member running it, until lease_until.
    owner        text,
    lease_until  timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    applied      bigint      NOT NULL DEFAULT 0,
    duplicates   bigint      NOT NULL DEFAULT 0,
    rejected     bigint      NOT NULL DEFAULT 0
);

-- Where each partition's replay stands: the next offset to read, and the
-- high watermark when the replay started, where it ends.
CREATE TABLE consumption_replay_partitions (
    replay_id   bigint  NOT NULL REFERENCES consumption_replays (id) ON DELETE CASCADE,
    "partition" integer NOT NULL,
    next_offset bigint  NOT NULL,
    end_offset  bigint  NOT NULL,
    PRIMARY KEY (replay_id, "partition")
);
