-- Metric history per model: every run, its gate decision and production metrics.
SELECT model, as_of::date AS night, run_id, status,
       (metrics #>> '{production,users}')::int AS test_users,
       round((metrics #>> '{production,ndcg_at_10}')::numeric, 4) AS ndcg_at_10,
       round((metrics #>> '{production,recall_at_10}')::numeric, 4) AS recall_at_10,
       (SELECT round(max((b.value ->> 'ndcg_at_10')::numeric), 4)
        FROM jsonb_each(metrics #> '{production,baselines}') b) AS best_baseline_ndcg_at_10,
       round((metrics #>> '{production,auc}')::numeric, 4) AS auc,
       (SELECT string_agg(r ->> 'message', '; ') FROM jsonb_array_elements(gate_reasons) r
        WHERE r ->> 'rule' NOT IN ('all', 'baseline')) AS rejected_because
FROM model_metrics_history
ORDER BY model, as_of DESC;
