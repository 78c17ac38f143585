-- Record one data check; snapshots older than the retention are cleared (the figures stay).
WITH pruned AS (
    UPDATE data_checks SET user_ids = NULL, movie_ids = NULL
    WHERE user_ids IS NOT NULL AND night < CAST(:night AS timestamptz) - CAST(:keep_snapshots AS interval)
)
INSERT INTO data_checks (night, since, previous_night, dry_run, rules, figures, fired, decision, context,
                         user_ids, movie_ids)
VALUES (:night, :since, :previous_night, :dry_run, CAST(:rules AS jsonb), CAST(:figures AS jsonb),
        CAST(:fired AS jsonb), :decision, :context, CAST(:user_ids AS integer[]), CAST(:movie_ids AS integer[]))
RETURNING check_id
