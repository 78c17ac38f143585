-- The data gate's figures for the night :night (recpipe/gate.py data_figures).
-- The night's ingest batches are the report's (recpipe/report.py), counted from :since
-- instead of one day back: interval ends in (since, night]; a batch without an interval
-- end counts when it finished in the 24 hours before this check. Lines are ratings.dat's.
-- Users and movies present: those with a rating before the night; vanished: in the
-- previous check's snapshot (:previous_check, may be NULL) and without a rating now.
WITH night_batches AS (
    SELECT batch_id, lines_read, rejected FROM ingest_batches
    WHERE finished_at IS NOT NULL
      AND CASE WHEN interval_end IS NOT NULL
               THEN interval_end > :since AND interval_end <= :night
               ELSE finished_at > now() - interval '1 day' AND finished_at <= now() END
),
users_now AS (SELECT DISTINCT user_id AS id FROM ratings WHERE rated_at < :night),
movies_now AS (SELECT DISTINCT movie_id AS id FROM ratings WHERE rated_at < :night),
previous AS (SELECT user_ids, movie_ids FROM data_checks WHERE check_id = CAST(:previous_check AS bigint))
SELECT
    (SELECT coalesce(array_agg(batch_id ORDER BY batch_id), '{}') FROM night_batches) AS batch_ids,
    (SELECT coalesce(sum(lines_read), 0) FROM night_batches) AS lines_read,
    (SELECT coalesce(sum(rejected), 0) FROM night_batches) AS rejected,
    (SELECT count(*) FROM ratings WHERE rated_at >= :since AND rated_at < :night) AS new_ratings,
    (SELECT array_agg(id ORDER BY id) FROM users_now) AS user_ids,
    (SELECT array_agg(id ORDER BY id) FROM movies_now) AS movie_ids,
    (SELECT cardinality(user_ids) FROM previous) AS previous_users,
    (SELECT cardinality(movie_ids) FROM previous) AS previous_movies,
    (SELECT count(*) FROM previous, unnest(previous.user_ids) AS p(id)
     WHERE NOT EXISTS (SELECT 1 FROM users_now u WHERE u.id = p.id)) AS vanished_users,
    (SELECT count(*) FROM previous, unnest(previous.movie_ids) AS p(id)
     WHERE NOT EXISTS (SELECT 1 FROM movies_now m WHERE m.id = p.id)) AS vanished_movies
