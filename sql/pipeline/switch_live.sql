-- Make :run_id the live run of :model unless a newer night of that model is live
-- (a backfilled older night is stored, never live). Returns the live run_id when switched.
INSERT INTO published_runs AS p (model, run_id) VALUES (:model, :run_id)
ON CONFLICT (model) DO UPDATE SET run_id = EXCLUDED.run_id, published_at = now()
    WHERE (SELECT as_of FROM model_runs WHERE run_id = p.run_id) <= :as_of
RETURNING run_id
