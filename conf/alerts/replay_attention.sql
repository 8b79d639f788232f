-- The failed-run stores need attention when a store's backlog grew between its last two replay
-- passes, or payloads were quarantined since the pass before (from replay_store_log, a row per
-- pass). The alert fires when needs_attention > 0. ${database} is the tables' database.
WITH passes AS (
  SELECT replay_dir, pending, quarantined,
         ROW_NUMBER() OVER (PARTITION BY replay_dir ORDER BY recorded_at DESC) AS pass
  FROM ${database}.replay_store_log
),
changes AS (
  SELECT cur.replay_dir,
         CASE WHEN cur.pending > COALESCE(prev.pending, 0) THEN 1 ELSE 0 END AS growing,
         GREATEST(cur.quarantined - COALESCE(prev.quarantined, 0), 0) AS new_quarantined
  FROM passes AS cur
  LEFT JOIN passes AS prev ON prev.replay_dir = cur.replay_dir AND prev.pass = 2
  WHERE cur.pass = 1
)
SELECT CAST(COALESCE(SUM(growing), 0) AS BIGINT) AS growing_backlogs,
       CAST(COALESCE(SUM(new_quarantined), 0) AS BIGINT) AS new_quarantined,
       CAST(COALESCE(SUM(growing), 0) + COALESCE(SUM(new_quarantined), 0) AS BIGINT) AS needs_attention
FROM changes
