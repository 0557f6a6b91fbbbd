-- The order events were rated in is the ledger's insertion order (`id`): a raw partition's batches
-- are committed in offset order and a customer's events share a partition. It is not ingestion
-- time: Kafka timestamps need not increase along a partition (two door replicas stamp at the same
-- moment, their clocks differ), and a group's total is its last rated line's `total_after`.
-- A replay inserts the rows it applies in the order it rated them.
ALTER TABLE replay_ledger ADD COLUMN rating_seq bigint;

CREATE OR REPLACE FUNCTION aforo_rebuild_totals(p_tenant text, p_period text) RETURNS void LANGUAGE sql AS $$
DELETE FROM revenue WHERE tenant = p_tenant AND period = p_period;
DELETE FROM revenue_distinct WHERE tenant = p_tenant AND period = p_period;
WITH keyed AS (
    SELECT l.customer, l.subscription, l.currency, x.metric, x.quantity, x.total_after, x.revenue, x.cost,
           l.id, m.aggregation,
           (extract(epoch FROM l.event_time) * 1000000)::bigint AS event_us,
           CASE WHEN c.charge ->> 'model' = 'matrix' THEN
               (SELECT '[' || string_agg(coalesce(to_json(x.grp ->> d)::text, 'null'), ',' ORDER BY o) || ']'
                FROM jsonb_array_elements_text(c.charge -> 'dimensions') WITH ORDINALITY AS dims(d, o))
           ELSE '[]' END AS gk
    FROM ledger l
    JOIN ledger_lines x USING (raw_topic_id, raw_partition, raw_offset)
    JOIN metrics m ON (m.tenant, m.code) = (l.tenantid, x.metric)
    LEFT JOIN plans p ON (p.tenant, p.code, p.version) = (l.tenantid, l.plan, l.plan_version)
    LEFT JOIN LATERAL (SELECT ch AS charge FROM jsonb_array_elements(p.charges) ch
                       WHERE ch ->> 'metric' = x.metric) c ON true
    WHERE l.tenantid = p_tenant AND l.period = p_period AND l.status = 'accepted'
), per_group AS (
    SELECT subscription, metric, gk,
           (array_agg(total_after ORDER BY id DESC))[1] AS total,
           CASE WHEN min(aggregation) = 'latest' THEN max(event_us) END AS latest_at
    FROM keyed GROUP BY 1, 2, 3
)
INSERT INTO revenue (tenant, customer, subscription, metric, period, currency, events, quantity, revenue,
                     cost, groups)
SELECT p_tenant, k.customer, k.subscription, k.metric, p_period, k.currency, count(*),
       (SELECT sum(g.total) FROM per_group g WHERE (g.subscription, g.metric) = (k.subscription, k.metric)),
       sum(k.revenue), sum(k.cost),
       (SELECT jsonb_object_agg(g.gk, jsonb_build_array(g.total::text, g.latest_at)) FROM per_group g
        WHERE (g.subscription, g.metric) = (k.subscription, k.metric))
FROM keyed k GROUP BY k.customer, k.subscription, k.currency, k.metric;
INSERT INTO revenue_distinct
SELECT DISTINCT p_tenant, l.subscription, x.metric, p_period, '[]',
       (convert_from(l.raw, 'UTF8')::jsonb -> 'data' #> string_to_array(substr(m.value_path, 3), '.'))::text
FROM ledger l
JOIN ledger_lines x USING (raw_topic_id, raw_partition, raw_offset)
JOIN metrics m ON (m.tenant, m.code) = (l.tenantid, x.metric)
WHERE l.tenantid = p_tenant AND l.period = p_period AND l.status = 'accepted'
  AND m.aggregation = 'unique_count';
$$;
