-- The run registry after the model interface: runs point at their artifact bundle,
-- say whether they are a baseline, and dry runs are rows of their own that never
-- replace (or touch) the night's real runs. Failed nights' candidates are 'failed'.
ALTER TABLE model_runs
    ADD COLUMN artifact_id bigint REFERENCES artifacts,
    ADD COLUMN is_baseline boolean NOT NULL DEFAULT false,
    ADD COLUMN dry_run     boolean NOT NULL DEFAULT false,
    ADD COLUMN plan        jsonb   NOT NULL DEFAULT '{}',
    DROP CONSTRAINT model_runs_model_as_of_key,
    DROP CONSTRAINT model_runs_status_check,
    ADD CONSTRAINT model_runs_status_check CHECK (status IN ('candidate', 'promoted', 'rejected', 'failed'));
UPDATE model_runs SET is_baseline = (model = 'popularity');
-- Re-running a night replaces its run instead of adding one (dry runs excepted).
CREATE UNIQUE INDEX model_runs_model_night ON model_runs (model, as_of) WHERE NOT dry_run;

-- Per user, the list of the best live learned model (by production NDCG@10) that has
-- one, the baseline last.
CREATE OR REPLACE VIEW recommendations_default AS
    WITH ranked_models AS (
        SELECT p.model, p.run_id, r.is_baseline,
               row_number() OVER (ORDER BY r.is_baseline,
                                  (r.metrics #>> '{production,ndcg_at_10}')::double precision DESC NULLS LAST,
                                  r.model) AS preference
        FROM published_runs p JOIN model_runs r ON r.run_id = p.run_id
    ), chosen AS (
        SELECT DISTINCT ON (rec.user_id) rec.user_id, rm.model, rm.run_id
        FROM recommendations rec JOIN ranked_models rm ON rm.run_id = rec.run_id
        WHERE NOT rec.fallback OR rm.is_baseline
        ORDER BY rec.user_id, rm.preference
    )
    SELECT c.model, rec.user_id, rec.rank, rec.movie_id, m.title, rec.score,
           rec.run_id, r.as_of, rec.fallback
    FROM chosen c
    JOIN recommendations rec ON rec.run_id = c.run_id AND rec.user_id = c.user_id
    JOIN model_runs r ON r.run_id = c.run_id
    JOIN movies m ON m.movie_id = rec.movie_id;

-- Dry runs are not part of the history analysts read.
CREATE OR REPLACE VIEW model_metrics_history AS
    SELECT run_id, model, as_of, status, metrics, gate_reasons, created_at, decided_at
    FROM model_runs WHERE NOT dry_run;
