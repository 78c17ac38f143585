-- The published lists, partitioned by run: each run's lists are one partition
-- (recpipe_lists.run_<run_id>), written first as a staging table (recpipe_lists.stage_<run_id>)
-- by one process or by parallel user shards, then attached when the run goes live.
-- Retention drops whole partitions instead of deleting rows; a shard killed mid-write
-- leaves only an unattached staging table.
CREATE SCHEMA recpipe_lists;
REVOKE ALL ON SCHEMA recpipe_lists FROM PUBLIC;

ALTER TABLE recommendations RENAME TO recommendations_unpartitioned;
ALTER INDEX recommendations_pkey RENAME TO recommendations_unpartitioned_pkey;

CREATE TABLE recommendations (
    run_id    bigint   NOT NULL,
    user_id   integer  NOT NULL,
    rank      smallint NOT NULL CHECK (rank >= 1),
    movie_id  integer  NOT NULL,
    score     real     NOT NULL,
    fallback  boolean  NOT NULL DEFAULT false,  -- a baseline's list given for lack of history
    PRIMARY KEY (run_id, user_id, rank)          -- one user's list is an index range scan
) PARTITION BY LIST (run_id);

DO $$
DECLARE
    run bigint;
BEGIN
    FOR run IN SELECT DISTINCT run_id FROM recommendations_unpartitioned ORDER BY 1 LOOP
        EXECUTE 'CREATE TABLE recpipe_lists.run_' || run || ' (LIKE recommendations INCLUDING DEFAULTS'
                || ' INCLUDING CONSTRAINTS INCLUDING INDEXES, CHECK (run_id = ' || run || '))';
        EXECUTE 'INSERT INTO recpipe_lists.run_' || run
                || ' SELECT * FROM recommendations_unpartitioned WHERE run_id = ' || run;
        EXECUTE 'ALTER TABLE recommendations ATTACH PARTITION recpipe_lists.run_' || run
                || ' FOR VALUES IN (' || run || ')';
    END LOOP;
END
$$;

-- The views bound to the old table: the same definitions on the partitioned one.
CREATE OR REPLACE VIEW recommendations_current AS
    SELECT r.model, rec.user_id, rec.rank, rec.movie_id, m.title, rec.score,
           rec.run_id, r.as_of, rec.fallback
    FROM published_runs p
    JOIN model_runs r ON r.run_id = p.run_id
    JOIN recommendations rec ON rec.run_id = p.run_id
    JOIN movies m ON m.movie_id = rec.movie_id;

CREATE OR REPLACE VIEW recommendations_default AS
    WITH ranked_models AS (
        SELECT p.model, p.run_id, r.is_baseline,
               row_number() OVER (ORDER BY r.is_baseline,
                                  (r.metrics #>> '{production,ndcg_at_10}')::double precision DESC NULLS LAST,
                                  r.model) AS preference
        FROM published_runs p JOIN model_runs r ON r.run_id = p.run_id
    ), chosen AS (
        SELECT DISTINCT ON (rec.user_id) rec.user_id, rm.model, rm.run_id
        FROM recommendations rec JOIN ranked_models rm ON rm.run_id = rec.run_id
        WHERE NOT rec.fallback OR rm.is_baseline
        ORDER BY rec.user_id, rm.preference
    )
    SELECT c.model, rec.user_id, rec.rank, rec.movie_id, m.title, rec.score,
           rec.run_id, r.as_of, rec.fallback
    FROM chosen c
    JOIN recommendations rec ON rec.run_id = c.run_id AND rec.user_id = c.user_id
    JOIN model_runs r ON r.run_id = c.run_id
    JOIN movies m ON m.movie_id = rec.movie_id;

CREATE OR REPLACE VIEW recommendations_all AS
    SELECT r.model, rec.run_id, r.as_of, r.status, rec.user_id, rec.rank, rec.movie_id, rec.score, rec.fallback,
           r.phase, r.gated_run_id
    FROM recommendations rec JOIN model_runs r ON r.run_id = rec.run_id;

DROP TABLE recommendations_unpartitioned;
