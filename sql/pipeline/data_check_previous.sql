-- The previous night of :night for the data gate: the newest earlier night that was
-- gated (a run that is not a dry run was promoted or rejected), and that night's newest
-- passed check still holding its snapshot of users and movies (NULL before the gate existed).
SELECT n.night,
       (SELECT c.check_id FROM data_checks c
        WHERE c.night = n.night AND c.decision = 'passed' AND NOT c.dry_run AND c.user_ids IS NOT NULL
        ORDER BY c.check_id DESC LIMIT 1) AS check_id
FROM (SELECT max(as_of) AS night FROM model_runs
      WHERE as_of < :night AND NOT dry_run AND status IN ('promoted', 'rejected')) n
WHERE n.night IS NOT NULL
