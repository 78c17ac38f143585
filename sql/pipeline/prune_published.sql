-- Remove the lists of :model's runs older than its live night minus :keep (never a live run's).
DELETE FROM recommendations rec USING model_runs r
WHERE rec.run_id = r.run_id AND r.model = :model
  AND r.as_of < (SELECT max(r2.as_of) FROM model_runs r2 JOIN published_runs p ON p.run_id = r2.run_id
                 WHERE p.model = :model) - :keep
  AND rec.run_id NOT IN (SELECT run_id FROM published_runs)
