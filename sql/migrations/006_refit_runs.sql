-- Two-phase nights: a model is gated as trained before the night - eval window
-- ('gated'), then refitted on every rating before the night ('refit') and, after a
-- sanity check against its gated run, that refit is what is published. Both runs are
-- in the registry, the refit pointing at its gated run.
ALTER TABLE model_runs
    ADD COLUMN phase        text   NOT NULL DEFAULT 'gated' CHECK (phase IN ('gated', 'refit')),
    ADD COLUMN gated_run_id bigint REFERENCES model_runs;
DROP INDEX model_runs_model_night;
CREATE UNIQUE INDEX model_runs_model_night_phase ON model_runs (model, as_of, phase) WHERE NOT dry_run;

-- Which run produced which list: its phase and, for a refit, the gated run it came from.
CREATE OR REPLACE VIEW recommendations_all AS
    SELECT r.model, rec.run_id, r.as_of, r.status, rec.user_id, rec.rank, rec.movie_id, rec.score, rec.fallback,
           r.phase, r.gated_run_id
    FROM recommendations rec JOIN model_runs r ON r.run_id = rec.run_id;

CREATE OR REPLACE VIEW model_metrics_history AS
    SELECT run_id, model, as_of, status, metrics, gate_reasons, created_at, decided_at, phase, gated_run_id
    FROM model_runs WHERE NOT dry_run;
