-- Catalogue coverage and popularity bias of each model's live lists.
-- coverage: distinct recommended movies / movies in the catalogue;
-- mean_item_ratings: average number of ratings of the recommended movies
--   (compare with catalogue_mean_ratings: higher = more popularity-biased);
-- share_top100: share of recommendations among the 100 most-rated movies.
WITH top100 AS (
    SELECT movie_id FROM catalogue ORDER BY ratings DESC, movie_id LIMIT 100
)
SELECT rc.model,
       count(DISTINCT rc.movie_id) AS distinct_movies,
       round(count(DISTINCT rc.movie_id)::numeric / (SELECT count(*) FROM catalogue), 4) AS coverage,
       round(avg(c.ratings), 1) AS mean_item_ratings,
       (SELECT round(avg(ratings), 1) FROM catalogue WHERE ratings > 0) AS catalogue_mean_ratings,
       round(avg((rc.movie_id IN (SELECT movie_id FROM top100))::int), 4) AS share_top100
FROM recommendations_current rc
JOIN catalogue c USING (movie_id)
GROUP BY rc.model
ORDER BY rc.model;
