-- Users whose lists changed most between the two newest stored runs of each model:
-- how many of the new top-10 were not in the previous one.
WITH runs AS (
    SELECT DISTINCT model, run_id, as_of FROM recommendations_all
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY model ORDER BY as_of DESC) AS age FROM runs
), pairs AS (
    SELECT n.model, n.run_id AS new_run, o.run_id AS old_run
    FROM ranked n JOIN ranked o ON o.model = n.model AND n.age = 1 AND o.age = 2
)
SELECT p.model, n.user_id,
       count(*) FILTER (WHERE o.movie_id IS NULL) AS new_items_in_top10,
       p.old_run, p.new_run
FROM pairs p
JOIN recommendations_all n ON n.run_id = p.new_run
LEFT JOIN recommendations_all o ON o.run_id = p.old_run AND o.user_id = n.user_id AND o.movie_id = n.movie_id
GROUP BY p.model, n.user_id, p.old_run, p.new_run
ORDER BY new_items_in_top10 DESC, p.model, n.user_id
LIMIT 20;
