-- Versioned artifacts (encoders, models) and session builds.
CREATE TABLE artifacts (
    artifact_id bigserial   PRIMARY KEY,
    kind        text        NOT NULL,   -- encodings, autoint, gru4rec, popularity
    as_of       timestamptz NOT NULL,
    path        text        NOT NULL,   -- relative to RECPIPE_HOME
    sha256      text        NOT NULL,
    row_counts  jsonb       NOT NULL DEFAULT '{}',
    details     jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX artifacts_kind_as_of ON artifacts (kind, as_of DESC);

CREATE TABLE session_builds (
    build_id    bigserial   PRIMARY KEY,
    as_of       timestamptz NOT NULL,
    purpose     text        NOT NULL CHECK (purpose IN ('evaluation', 'production')),
    params      jsonb       NOT NULL,
    stats       jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (as_of, purpose, params)
);

-- No foreign key on build_id: rows are written only by the build in the transaction
-- that writes its session_builds row, and per-row FK triggers would triple the
-- cost of writing a million rows.
CREATE TABLE sessions (
    build_id    bigint      NOT NULL,
    split       text        NOT NULL,   -- train, validation, test; latest (for scoring)
    session_id  bigint      NOT NULL,
    position    integer     NOT NULL,   -- 0-based place of the event in its session
    user_id     integer     NOT NULL,
    movie_id    integer     NOT NULL,
    rating      smallint    NOT NULL,
    rated_at    timestamptz NOT NULL,
    PRIMARY KEY (build_id, split, session_id, position)
);
