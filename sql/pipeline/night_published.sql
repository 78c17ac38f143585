-- The runs of a night's UTC day (:day_start <= as_of < :day_end) whose lists were
-- stored, dry runs excluded: what the deadline check looks for.
SELECT r.model, r.run_id, r.as_of
FROM model_runs r
WHERE r.as_of >= :day_start AND r.as_of < :day_end AND NOT r.dry_run
  AND EXISTS (SELECT 1 FROM recommendations rec WHERE rec.run_id = r.run_id)
ORDER BY r.model, r.run_id
