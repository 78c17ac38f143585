-- The staged ratings that are not plain inserts, by outcome: their count, and their
-- lines (to be quarantined with their bytes) unless the outcome is 'duplicate'.
-- A plain insert is a first occurrence in the file (repeat = 0) of a known user and a
-- known movie with no stored rating; ingest_plain_inserts.sql writes exactly the
-- complement, in the same transaction under the ingest lock.
SELECT outcome, count(*), array_agg(line_no) FILTER (WHERE outcome <> 'duplicate')
FROM (
    SELECT s.line_no,
           CASE
             -- Users implied by the ratings exist unless the item is unknown: say so.
             WHEN u.user_id IS NULL AND (m.movie_id IS NOT NULL OR NOT :users_implied) THEN 'unknown_user'
             WHEN m.movie_id IS NULL THEN 'unknown_movie'
             WHEN r.user_id IS NOT NULL AND r.rating = s.rating AND r.rated_at = to_timestamp(s.ts)
                  AND coalesce(r.rating_x2, 2 * r.rating) = s.rating_x2  -- NULL: stored before 013
               THEN 'duplicate'
             WHEN r.user_id IS NOT NULL THEN 'conflicts_stored'
             WHEN s.repeat = 1 THEN 'duplicate'
             ELSE 'duplicate_in_file'
           END AS outcome
    FROM stage_ratings s
    LEFT JOIN users u ON u.user_id = s.user_id
    LEFT JOIN movies m ON m.movie_id = s.movie_id
    LEFT JOIN ratings r ON r.user_id = s.user_id AND r.movie_id = s.movie_id
    WHERE u.user_id IS NULL OR m.movie_id IS NULL OR r.user_id IS NOT NULL OR s.repeat <> 0
) AS exceptions
GROUP BY outcome
