-- A user's live top-10 from every published model, with titles and genres.
-- psql -v user_id=42 -f sql/queries/user_top10.sql   (default user 1)
\if :{?user_id} \else \set user_id 1 \endif
SELECT rc.model, rc.rank, rc.movie_id, rc.title, array_to_string(m.genres, ', ') AS genres,
       round(rc.score::numeric, 4) AS score, rc.fallback, rc.as_of
FROM recommendations_current rc
JOIN catalogue m USING (movie_id)
WHERE rc.user_id = :user_id
ORDER BY rc.model, rc.rank;
