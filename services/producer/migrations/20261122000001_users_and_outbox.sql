-- Users, owned by the producer.
CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    username      text        NOT NULL,
    email         text        NOT NULL,
    -- argon2id, PHC string format.
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL
);
-- Usernames and emails are unique regardless of case.
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Transactional outbox: each event is inserted in the same transaction as
-- the change it describes; the relay publishes rows in `id` order and sets
-- `published_at` after the broker's delivery report.
CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    event_type   text        NOT NULL,
    -- The user id: record key and ce_subject.
    subject      text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    data         jsonb       NOT NULL,
    published_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
