-- Topics, or partitions of them, an operator paused (POST /consumption/pause):
-- every member of the group keeps them paused, across restarts, until an
-- operator resumes them (POST /consumption/resume).
CREATE TABLE consumption_pauses (
    topic     text        NOT NULL,
    -- -1: every partition of the topic.
    partition integer     NOT NULL,
    reason    text        NOT NULL,
    paused_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
