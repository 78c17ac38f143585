-- Whether every rating time in [:start, :end) was covered by finished ingest batches:
-- the union of their intervals (NULL bounds are unbounded: an --all batch covers
-- everything) contains the interval. A failed ingest rolls back its batch row, so only
-- successful loads count. NULL (no batch at all) is read as false.
SELECT coalesce(
         range_agg(tstzrange(interval_start, interval_end, '[)')) @> tstzrange(:start, :end, '[)'),
         false)
FROM ingest_batches
WHERE finished_at IS NOT NULL
