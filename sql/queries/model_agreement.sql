-- How much the live lists of each pair of models agree: mean overlap of the
-- top-10s (items in both lists / 10) over the users both models serve.
WITH lists AS (
    SELECT model, user_id, array_agg(movie_id) AS items
    FROM recommendations_current WHERE NOT fallback
    GROUP BY model, user_id
)
SELECT a.model AS model_a, b.model AS model_b, count(*) AS users,
       round(avg(cardinality(ARRAY(SELECT unnest(a.items) INTERSECT SELECT unnest(b.items))) / 10.0), 4)
           AS mean_overlap_at_10,
       round(avg((a.items[1] = b.items[1])::int), 4) AS same_first_item
FROM lists a JOIN lists b ON a.user_id = b.user_id AND a.model < b.model
GROUP BY a.model, b.model
ORDER BY a.model, b.model;
