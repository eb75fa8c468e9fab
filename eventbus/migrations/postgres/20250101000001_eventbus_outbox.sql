-- eventbus transactional outbox: one row per event, written in the caller's transaction and
-- relayed to the broker by the dispatcher.
CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID        NOT NULL,
    topic           TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    partition_key   TEXT,
    payload         BYTEA       NOT NULL,
    headers         JSONB       NOT NULL DEFAULT '{}'::jsonb,
    key_id          TEXT,
    state           TEXT        NOT NULL DEFAULT 'PENDING'
                                CHECK (state IN ('PENDING', 'SENT', 'FAILED')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    available_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    first_failed_at TIMESTAMPTZ,
    sent_at         TIMESTAMPTZ
);

-- Dispatcher: the oldest PENDING rows, in insertion order.
CREATE INDEX outbox_pending ON outbox (id) WHERE state = 'PENDING';
-- Dispatcher: earlier PENDING rows of the same partition key (per-key order).
CREATE INDEX outbox_pending_key ON outbox (partition_key, id) WHERE state = 'PENDING';
-- Cleanup: SENT rows past their retention.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE state = 'SENT';
-- Metrics and tooling: rows given up on.
CREATE INDEX outbox_failed ON outbox (id) WHERE state = 'FAILED';

-- SENT rows moved out by a cleanup in archive mode.
CREATE TABLE outbox_archive (
    id              BIGINT      PRIMARY KEY,
    event_id        UUID        NOT NULL,
    topic           TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    partition_key   TEXT,
    payload         BYTEA       NOT NULL,
    headers         JSONB       NOT NULL,
    key_id          TEXT,
    attempts        INTEGER     NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    sent_at         TIMESTAMPTZ,
    archived_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Wakes dispatchers listening on `eventbus_outbox` when enqueued rows commit (NOTIFY is
-- delivered at commit, once per transaction).
CREATE FUNCTION eventbus_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('eventbus_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION eventbus_outbox_notify();
