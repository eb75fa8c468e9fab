-- eventbus aggregate snapshots: the fold of one aggregate's events up to `positions` (where
-- the read of each topic ended), so a rebuild reads only what came after. `taken_at` is Unix
-- milliseconds (UTC).
CREATE TABLE aggregate_snapshot (
    aggregate     TEXT    NOT NULL,
    aggregate_key TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    applied       INTEGER NOT NULL,
    positions     TEXT    NOT NULL,
    last_time     TEXT,
    taken_at      INTEGER NOT NULL,
    PRIMARY KEY (aggregate, aggregate_key)
);
