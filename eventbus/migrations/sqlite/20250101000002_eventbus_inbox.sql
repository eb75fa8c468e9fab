-- eventbus inbox: the events each consumer group has handled, so a redelivered event is
-- recognised and its side effect is not repeated. `processed_at` is Unix milliseconds (UTC).
CREATE TABLE inbox (
    consumer_group TEXT    NOT NULL,
    event_id       BLOB    NOT NULL,
    processed_at   INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, event_id)
);

-- Retention cleanup: the oldest rows first.
CREATE INDEX inbox_processed_at ON inbox (processed_at);
