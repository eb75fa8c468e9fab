-- eventbus transactional outbox: one row per event, written in the caller's transaction and
-- relayed to the broker by the dispatcher. Times are Unix milliseconds (UTC).
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        BLOB    NOT NULL,
    topic           TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    partition_key   TEXT,
    payload         BLOB    NOT NULL,
    headers         TEXT    NOT NULL DEFAULT '{}',
    key_id          TEXT,
    state           TEXT    NOT NULL DEFAULT 'PENDING'
                            CHECK (state IN ('PENDING', 'SENT', 'FAILED')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    available_at    INTEGER NOT NULL,
    first_failed_at INTEGER,
    sent_at         INTEGER
);

-- Dispatcher: the oldest PENDING rows, in insertion order.
CREATE INDEX outbox_pending ON outbox (id) WHERE state = 'PENDING';
-- Dispatcher: rows waiting for a retry hold back the later rows of their partition key. With
-- one dispatcher per SQLite file they are the only rows that can, so the index holds just
-- them and marking a row SENT never touches it.
CREATE INDEX outbox_retrying ON outbox (partition_key, id) WHERE state = 'PENDING' AND attempts > 0;
-- Cleanup: SENT rows past their retention.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE state = 'SENT';
-- Metrics and tooling: rows given up on.
CREATE INDEX outbox_failed ON outbox (id) WHERE state = 'FAILED';

-- SENT rows moved out by a cleanup in archive mode.
CREATE TABLE outbox_archive (
    id            INTEGER PRIMARY KEY,
    event_id      BLOB    NOT NULL,
    topic         TEXT    NOT NULL,
    event_type    TEXT    NOT NULL,
    partition_key TEXT,
    payload       BLOB    NOT NULL,
    headers       TEXT    NOT NULL,
    key_id        TEXT,
    attempts      INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    sent_at       INTEGER,
    archived_at   INTEGER NOT NULL
);
