-- Model runs registry, published top-k lists, alerts.
CREATE TABLE model_runs (
    run_id          bigserial   PRIMARY KEY,
    model           text        NOT NULL,           -- autoint, gru4rec, popularity
    as_of           timestamptz NOT NULL,
    config          jsonb       NOT NULL DEFAULT '{}',
    data_stats      jsonb       NOT NULL DEFAULT '{}',
    metrics         jsonb       NOT NULL DEFAULT '{}',
    artifact_path   text,
    artifact_sha256 text,
    status          text        NOT NULL DEFAULT 'candidate'
                    CHECK (status IN ('candidate', 'promoted', 'rejected')),
    gate_reasons    jsonb       NOT NULL DEFAULT '[]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    decided_at      timestamptz,
    UNIQUE (model, as_of)   -- re-running a night replaces its run instead of adding one
);

-- No foreign key on run_id: rows are written only by publish, in the transaction that
-- checks the run, and per-row FK triggers would dominate the cost of publishing.
CREATE TABLE recommendations (
    run_id    bigint   NOT NULL,
    user_id   integer  NOT NULL,
    rank      smallint NOT NULL CHECK (rank >= 1),
    movie_id  integer  NOT NULL,
    score     real     NOT NULL,
    fallback  boolean  NOT NULL DEFAULT false,  -- popularity list given for lack of history
    PRIMARY KEY (run_id, user_id, rank)          -- one user's list is an index range scan
);

-- Which run of each model is live. Switching is one UPDATE in the publishing
-- transaction, so readers see the old complete lists or the new complete lists.
CREATE TABLE published_runs (
    model         text        PRIMARY KEY,
    run_id        bigint      NOT NULL REFERENCES model_runs,
    published_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alerts (
    alert_id    bigserial   PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    severity    text        NOT NULL DEFAULT 'warning',
    kind        text        NOT NULL,   -- gate_rejected, metric_regression, task_failed
    model       text,
    metric      text,
    value       double precision,
    threshold   double precision,
    run_id      bigint REFERENCES model_runs ON DELETE SET NULL,
    context     text,                   -- e.g. Airflow dag_id/run_id/task_id
    message     text        NOT NULL,
    notified    jsonb       NOT NULL DEFAULT '[]'  -- channels the alert was sent to
);

CREATE VIEW recommendations_current AS
    SELECT r.model, rec.user_id, rec.rank, rec.movie_id, m.title, rec.score,
           rec.run_id, r.as_of, rec.fallback
    FROM published_runs p
    JOIN model_runs r ON r.run_id = p.run_id
    JOIN recommendations rec ON rec.run_id = p.run_id
    JOIN movies m ON m.movie_id = rec.movie_id;

-- Per user, the list of the best live model (by production NDCG@10) that has one,
-- popularity last.
CREATE VIEW recommendations_default AS
    WITH ranked_models AS (
        SELECT p.model, p.run_id,
               row_number() OVER (ORDER BY (r.model = 'popularity'),
                                  (r.metrics #>> '{production,ndcg_at_10}')::double precision DESC NULLS LAST,
                                  r.model) AS preference
        FROM published_runs p JOIN model_runs r ON r.run_id = p.run_id
    ), chosen AS (
        SELECT DISTINCT ON (rec.user_id) rec.user_id, rm.model, rm.run_id
        FROM recommendations rec JOIN ranked_models rm ON rm.run_id = rec.run_id
        WHERE NOT rec.fallback OR rm.model = 'popularity'
        ORDER BY rec.user_id, rm.preference
    )
    SELECT c.model, rec.user_id, rec.rank, rec.movie_id, m.title, rec.score,
           rec.run_id, r.as_of, rec.fallback
    FROM chosen c
    JOIN recommendations rec ON rec.run_id = c.run_id AND rec.user_id = c.user_id
    JOIN model_runs r ON r.run_id = c.run_id
    JOIN movies m ON m.movie_id = rec.movie_id;

-- Every stored run's lists (live or not, until retention removes them).
CREATE VIEW recommendations_all AS
    SELECT r.model, rec.run_id, r.as_of, r.status, rec.user_id, rec.rank, rec.movie_id, rec.score, rec.fallback
    FROM recommendations rec JOIN model_runs r ON r.run_id = rec.run_id;

-- The catalogue with how often each movie was rated: for coverage and popularity bias.
CREATE VIEW catalogue AS
    SELECT m.movie_id, m.title, m.year, m.genres,
           count(r.user_id) AS ratings, count(r.user_id) FILTER (WHERE r.rating >= 4) AS positives
    FROM movies m LEFT JOIN ratings r ON r.movie_id = m.movie_id
    GROUP BY m.movie_id;

CREATE VIEW model_metrics_history AS
    SELECT run_id, model, as_of, status, metrics, gate_reasons, created_at, decided_at
    FROM model_runs;

-- Analysts' read-only role: the views, never the raw tables.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'recpipe_reader') THEN
        CREATE ROLE recpipe_reader NOLOGIN;
    END IF;
END
$$;
GRANT SELECT ON recommendations_current, recommendations_default, recommendations_all, catalogue,
    model_metrics_history TO recpipe_reader;
