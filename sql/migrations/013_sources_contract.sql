-- Sources beyond ML-1M (recpipe/source.py, "Sources"): ratings are required, item and
-- user attributes are optional. A source without users (ML-25M/32M, a generic folder
-- without users.csv) or without items stores its ids with NULL attributes.
ALTER TABLE users
    ALTER COLUMN gender DROP NOT NULL,
    ALTER COLUMN age DROP NOT NULL,
    ALTER COLUMN occupation DROP NOT NULL,
    ALTER COLUMN zip DROP NOT NULL;
ALTER TABLE movies
    ALTER COLUMN title DROP NOT NULL,
    ALTER COLUMN genres DROP NOT NULL;   -- NULL: genres unknown; '{}': none listed

-- Half stars (ML-25M/32M): `rating` stays the 1..5 integer the models read (the stars
-- rounded down, 0.5 -> 1, so every whole-star threshold such as "liked = 4+" is
-- unchanged); the exact value is kept in half-star units. NULL: rows stored before 013
-- (whole stars: rating_x2 = 2 * rating).
ALTER TABLE ratings
    ADD COLUMN rating_x2 smallint CHECK (rating_x2 BETWEEN 1 AND 10 AND rating = greatest(1, rating_x2 / 2));

ALTER TABLE ingest_batches ADD COLUMN source_format text;  -- ml-1m, ml-25m, ml-32m, generic

-- Rejected ratings lines of every format, not only ratings.dat.
CREATE OR REPLACE VIEW rejected_ratings AS
    SELECT batch_id, line_no, raw_line, reason, recorded_at, raw_bytes, resolved_by_batch
    FROM rejected_rows WHERE source_file IN ('ratings.dat', 'ratings.csv');
