-- The consumer's read model of users, built from events.
CREATE TABLE users (
    id                   uuid        PRIMARY KEY,
    username             text        NOT NULL,
    email                text        NOT NULL,
    created_at           timestamptz NOT NULL,
    tokens_issued        bigint      NOT NULL DEFAULT 0,
    last_token_issued_at timestamptz
);

-- Every event applied, by ce_id, written in the same transaction as its
-- effect: a redelivered record finds its id here and changes nothing.
CREATE TABLE processed_events (
    event_id     uuid        PRIMARY KEY,
    event_type   text        NOT NULL,
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);
