-- Insert the plain inserts of stage_ratings (the complement of ingest_exceptions.sql):
-- first occurrences in the file of a known user and movie with no stored rating.
-- Streamed from the stage, never materialised. :in_key_order sorts them by primary key
-- when the indexes stay in place (sequential index inserts); a bulk load that rebuilds
-- the indexes afterwards skips that sort.
INSERT INTO ratings (user_id, movie_id, rating, rating_x2, rated_at, batch_id, source_line)
SELECT s.user_id, s.movie_id, s.rating, s.rating_x2, to_timestamp(s.ts), :batch, s.line_no
FROM stage_ratings s
WHERE s.repeat = 0
  AND EXISTS (SELECT 1 FROM users u WHERE u.user_id = s.user_id)
  AND EXISTS (SELECT 1 FROM movies m WHERE m.movie_id = s.movie_id)
  AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.user_id = s.user_id AND r.movie_id = s.movie_id)
ORDER BY CASE WHEN :in_key_order THEN s.user_id END, CASE WHEN :in_key_order THEN s.movie_id END
