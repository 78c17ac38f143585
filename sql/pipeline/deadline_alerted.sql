-- The deadline alert already recorded for a day (a rerun of the check alerts once).
SELECT alert_id FROM alerts WHERE kind = 'deadline_missed' AND context = :context ORDER BY alert_id LIMIT 1
