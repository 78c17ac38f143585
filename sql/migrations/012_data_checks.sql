-- The data-quality gate: one row per check of a night's data before training
-- (recpipe/gate.py check_data). A stopped night has its fired rules here and a
-- 'data_gate' row in alerts per rule.
CREATE TABLE data_checks (
    check_id        bigserial   PRIMARY KEY,
    night           timestamptz NOT NULL,
    since           timestamptz NOT NULL,   -- new ratings and ingest batches are counted from here
    previous_night  timestamptz,            -- the previous gated night (vanished users and movies)
    dry_run         boolean     NOT NULL DEFAULT false,
    rules           jsonb       NOT NULL,   -- gate.yaml's data section with the night's overrides
    figures         jsonb       NOT NULL,
    fired           jsonb       NOT NULL DEFAULT '[]',
    decision        text        NOT NULL CHECK (decision IN ('passed', 'stopped')),
    alert_ids       bigint[]    NOT NULL DEFAULT '{}',
    context         text,                   -- the Airflow run, when there is one
    checked_at      timestamptz NOT NULL DEFAULT now(),
    -- Who had ratings before the night: the next night's vanished check compares with
    -- it. Cleared after the retention period (the figures stay).
    user_ids        integer[],
    movie_ids       integer[]
);
CREATE INDEX data_checks_night ON data_checks (night, check_id);
GRANT SELECT ON data_checks TO recpipe_reader;
