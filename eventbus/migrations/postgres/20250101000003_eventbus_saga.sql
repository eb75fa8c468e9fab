-- eventbus sagas: one row per saga instance, its state as JSON. `version` counts the saves;
-- a save names the version it loaded, so two concurrent steps cannot both win.
CREATE TABLE saga (
    saga_name    TEXT        NOT NULL,
    saga_id      TEXT        NOT NULL,
    state        JSONB       NOT NULL,
    version      BIGINT      NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ,
    PRIMARY KEY (saga_name, saga_id)
);

-- Retention: completed instances, oldest first.
CREATE INDEX saga_completed ON saga (completed_at) WHERE completed_at IS NOT NULL;

-- Completed instances moved out by a cleanup in archive mode.
CREATE TABLE saga_archive (
    saga_name    TEXT        NOT NULL,
    saga_id      TEXT        NOT NULL,
    state        JSONB       NOT NULL,
    version      BIGINT      NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ NOT NULL,
    archived_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_name, saga_id)
);
