-- Quarantine keyed by batch, with each rejected line's exact bytes; a per-file ledger.
--
-- rejected_rows holds each distinct rejected line once: the batch that first rejected
-- it, its bytes, its first reason, and the later batch that stored that line (if one
-- did). rejected_sightings holds every rejection of every batch (a batch that re-reads
-- a line already quarantined with the same bytes and not yet resolved points at that
-- row instead of copying it), so each batch's rejected count is exactly its sightings.

ALTER TABLE rejected_rows
    ADD COLUMN raw_bytes bytea,            -- the line exactly as read, without its newline
    ADD COLUMN resolved_by_batch bigint REFERENCES ingest_batches;  -- a later batch stored it

-- Rows recorded before 010 kept text only: latin-1 gives their bytes back, except for
-- ratings.dat lines whose non-ASCII bytes were written as \xNN escapes.
UPDATE rejected_rows SET raw_bytes = CASE WHEN raw_line ~ '^[\u0001-\u00ff]*$'
    THEN convert_to(raw_line, 'LATIN1') ELSE convert_to(raw_line, 'UTF8') END;
ALTER TABLE rejected_rows ALTER COLUMN raw_bytes SET NOT NULL;

-- One row per (batch, file, line): a later file's different line at the same place
-- is no longer lost.
ALTER TABLE rejected_rows DROP CONSTRAINT rejected_rows_pkey;
ALTER TABLE rejected_rows ADD PRIMARY KEY (batch_id, source_file, line_no);
CREATE INDEX rejected_rows_open ON rejected_rows (source_file, line_no) WHERE resolved_by_batch IS NULL;

CREATE TABLE rejected_sightings (
    batch_id        bigint NOT NULL REFERENCES ingest_batches,
    source_file     text   NOT NULL,
    line_no         bigint NOT NULL,
    reason          text   NOT NULL,   -- this batch's reason (it may differ from the first)
    recorded_batch  bigint NOT NULL,   -- the rejected_rows row holding the bytes
    PRIMARY KEY (batch_id, source_file, line_no),
    FOREIGN KEY (recorded_batch, source_file, line_no)
        REFERENCES rejected_rows (batch_id, source_file, line_no) ON DELETE CASCADE
);
INSERT INTO rejected_sightings (batch_id, source_file, line_no, reason, recorded_batch)
    SELECT batch_id, source_file, line_no, reason, batch_id FROM rejected_rows;

-- Every file of every batch reconciles, not only ratings.dat: stored (inserted or
-- changed), duplicate (already stored as is, or an exact repeat in the file), rejected.
CREATE TABLE ingest_batch_files (
    batch_id      bigint NOT NULL REFERENCES ingest_batches,
    source_file   text   NOT NULL,
    input_sha256  text   NOT NULL,
    encoding      text   NOT NULL,     -- ascii, latin-1 or utf-8 (see recpipe/source.py)
    lines_read    bigint NOT NULL,
    stored        bigint NOT NULL,
    duplicate     bigint NOT NULL,
    rejected      bigint NOT NULL,
    PRIMARY KEY (batch_id, source_file),
    CHECK (lines_read = stored + duplicate + rejected)
);

CREATE OR REPLACE VIEW rejected_ratings AS
    SELECT batch_id, line_no, raw_line, reason, recorded_at, raw_bytes, resolved_by_batch
    FROM rejected_rows WHERE source_file = 'ratings.dat';
