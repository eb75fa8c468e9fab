-- eventbus aggregate snapshots: the fold of one aggregate's events up to `positions` (where
-- the read of each topic ended), so a rebuild reads only what came after.
CREATE TABLE aggregate_snapshot (
    aggregate     TEXT        NOT NULL,
    aggregate_key TEXT        NOT NULL,
    state         JSONB       NOT NULL,
    applied       BIGINT      NOT NULL,
    positions     JSONB       NOT NULL,
    last_time     TEXT,
    taken_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate, aggregate_key)
);
