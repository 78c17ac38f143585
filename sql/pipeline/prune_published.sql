-- The runs of :model whose lists retention removes: older than its live night minus
-- :keep, never a live run, with a stored partition (or the staging table a killed
-- publication left).
SELECT r.run_id
FROM model_runs r
WHERE r.model = :model
  AND r.as_of < (SELECT max(r2.as_of) FROM model_runs r2 JOIN published_runs p ON p.run_id = r2.run_id
                 WHERE p.model = :model) - :keep
  AND r.run_id NOT IN (SELECT run_id FROM published_runs)
  AND (to_regclass('recpipe_lists.run_' || r.run_id) IS NOT NULL
       OR to_regclass('recpipe_lists.stage_' || r.run_id) IS NOT NULL)
ORDER BY r.run_id
