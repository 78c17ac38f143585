-- The lists :model had live before its current live run: the newest earlier night of the
-- model whose lists are still stored (retention keeps them), promoted, not a dry run.
-- On a night with a gated and a refit run holding lists, the refit is what was shipped.
SELECT r.run_id, r.as_of, r.phase
FROM model_runs r
WHERE r.model = :model AND r.status = 'promoted' AND NOT r.dry_run
  AND r.as_of < :live_as_of
  AND EXISTS (SELECT 1 FROM recommendations rec WHERE rec.run_id = r.run_id)
ORDER BY r.as_of DESC, (r.phase = 'refit') DESC
LIMIT 1
