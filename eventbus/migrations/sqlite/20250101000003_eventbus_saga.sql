-- eventbus sagas: one row per saga instance, its state as JSON. `version` counts the saves;
-- a save names the version it loaded, so two concurrent steps cannot both win. Times are
-- Unix milliseconds (UTC).
CREATE TABLE saga (
    saga_name    TEXT    NOT NULL,
    saga_id      TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    completed_at INTEGER,
    PRIMARY KEY (saga_name, saga_id)
);

-- Retention: completed instances, oldest first.
CREATE INDEX saga_completed ON saga (completed_at) WHERE completed_at IS NOT NULL;

-- Completed instances moved out by a cleanup in archive mode.
CREATE TABLE saga_archive (
    saga_name    TEXT    NOT NULL,
    saga_id      TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    completed_at INTEGER NOT NULL,
    archived_at  INTEGER NOT NULL,
    PRIMARY KEY (saga_name, saga_id)
);
