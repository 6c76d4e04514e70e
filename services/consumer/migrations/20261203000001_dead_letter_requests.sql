-- Records an operator asked to dead-letter by where they were consumed
-- (POST /records/dead-letter): one whose handler panics, say, which stops
-- every member that takes its partition. A worker that reaches one
-- dead-letters it with the operator's reason instead of handling it.
CREATE TABLE dead_letter_requests (
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    reason text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
