-- Source tables and the ingest ledger.
CREATE TABLE users (
    user_id     integer PRIMARY KEY CHECK (user_id > 0),
    gender      text    NOT NULL CHECK (gender IN ('M', 'F')),
    age         integer NOT NULL,
    occupation  integer NOT NULL,
    zip         text    NOT NULL
);

CREATE TABLE movies (
    movie_id  integer PRIMARY KEY CHECK (movie_id > 0),
    title     text    NOT NULL,
    year      integer,            -- from "(1995)" in the title; NULL when absent
    genres    text[]  NOT NULL
);

CREATE TABLE ingest_batches (
    batch_id        bigserial   PRIMARY KEY,
    source          text        NOT NULL,          -- folder the files came from
    interval_start  timestamptz,                   -- NULL for --all
    interval_end    timestamptz,
    input_sha256    text        NOT NULL,          -- ratings.dat checksum
    lines_read      bigint      NOT NULL DEFAULT 0, -- lines attributed to this batch
    inserted        bigint      NOT NULL DEFAULT 0,
    duplicate       bigint      NOT NULL DEFAULT 0, -- identical to a stored rating
    rejected        bigint      NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CHECK (finished_at IS NULL OR lines_read = inserted + duplicate + rejected)
);

CREATE TABLE ratings (
    user_id     integer     NOT NULL REFERENCES users,
    movie_id    integer     NOT NULL REFERENCES movies,
    rating      smallint    NOT NULL CHECK (rating BETWEEN 1 AND 5),
    rated_at    timestamptz NOT NULL,
    batch_id    bigint      NOT NULL REFERENCES ingest_batches,
    source_line bigint      NOT NULL,  -- line in ratings.dat: breaks same-second ties
    PRIMARY KEY (user_id, movie_id)
);
CREATE INDEX ratings_rated_at ON ratings (rated_at);

-- Every line that was read and not stored, with why. One row per source line:
-- re-running an ingest does not record the same line twice.
CREATE TABLE rejected_rows (
    source_file text        NOT NULL,  -- ratings.dat, users.dat, movies.dat
    line_no     bigint      NOT NULL,
    batch_id    bigint      NOT NULL REFERENCES ingest_batches,
    raw_line    text        NOT NULL,
    reason      text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_file, line_no)
);

CREATE VIEW rejected_ratings AS
    SELECT batch_id, line_no, raw_line, reason, recorded_at
    FROM rejected_rows WHERE source_file = 'ratings.dat';
