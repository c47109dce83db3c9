"""Leads, timelines and texts already in the database before a scenario runs, made set-wise in SQL.

Lead ``j`` is ``pre{j}@example.com`` on site ``SITES[j % 4]`` (``bench.workload``), owned as that site's
signups are (the office's by the company, routed by the office) and assigned as its routing would:
the company's and the office's to john, jill and bob in turn, john's to john, the team's to tara. Each has ``events_per_lead`` timeline events (created,
routed, then notes, an hour apart). The rows are what the product writes, with its unique key
(``rules.uniqueness.unique_key``), so every lookup a new signup makes meets them.
"""

from __future__ import annotations

import time

import psycopg

LEADS = """
WITH e AS (SELECT slug, id FROM entities WHERE account_id = %(account)s),
new AS (
    INSERT INTO leads (
        id, account_id, owner_entity_id, assigned_agent_id, routed_via_entity_id, unique_key, status, in_pond,
        email, email_normalized, first_name, last_name, tags, source_kind, source_detail,
        email_unsubscribed, sms_unsubscribed, created_at, updated_at, last_activity_at
    )
    SELECT CAST(md5(%(tag)s || g) AS uuid), %(account)s, o.id, agent.id, via.id,
           'e:' || o.id || ':pre' || g || '@example.com', 'active', false,
           'pre' || g || '@example.com', 'pre' || g || '@example.com', 'Pre', 'Lead' || g, '["preload"]', 'site',
           'bench.preload', false, false, t.at, t.at, t.at
    FROM generate_series(%(start)s, %(stop)s - 1) AS g
    CROSS JOIN LATERAL (SELECT now() - interval '400 days' + g * interval '1 second' AS at) AS t
    -- An office's site makes a company lead routed by the office (O3, V1).
    JOIN e AS o ON o.slug = (ARRAY['co', 'co', 'john', 'sunrise'])[g %% 4 + 1]
    LEFT JOIN e AS via ON via.slug = (ARRAY['co', 'downtown', NULL, NULL])[g %% 4 + 1]
    JOIN e AS agent ON agent.slug = CASE g %% 4 WHEN 2 THEN 'john' WHEN 3 THEN 'tara'
                                     ELSE (ARRAY['john', 'jill', 'bob'])[g %% 3 + 1] END
    RETURNING id, account_id, created_at
)
INSERT INTO timeline_events (account_id, lead_id, at, kind, actor, summary, data)
SELECT new.account_id, new.id, new.created_at + n * interval '1 hour',
       CASE n WHEN 0 THEN 'created' WHEN 1 THEN 'routed' ELSE 'note' END, 'system', 'Preloaded by bench', '{}'
FROM new CROSS JOIN generate_series(0, %(events)s - 1) AS n
-- In index order: each batch walks the timeline's indexes once instead of jumping about them.
ORDER BY new.id, n
"""


def account_id(dsn: str, slug: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT id FROM accounts WHERE slug = %s", (slug,)).fetchone()
    assert row is not None, slug
    return int(row[0])


def preload_leads(dsn: str, account: int, start: int, stop: int, *, events_per_lead: int = 10) -> float:
    """Leads ``start`` to ``stop - 1`` with their timelines, in batches; the seconds it took, ANALYZE included."""
    began = time.perf_counter()
    batch = 100_000
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Bench rows only: a crash loses the preload, never a lead.
        conn.execute("SET synchronous_commit = off")
        # The rows refer to the account's own entities by construction: skip the per-row foreign key
        # triggers (two per event) that would make the preload, not the scenario, the long part.
        conn.execute("SET session_replication_role = replica")
        for low in range(start, stop, batch):
            conn.execute(
                LEADS,
                {
                    "account": account,
                    "start": low,
                    "stop": min(low + batch, stop),
                    "events": events_per_lead,
                    "tag": "",
                },
            )
        conn.execute("VACUUM ANALYZE leads")
        conn.execute("VACUUM ANALYZE timeline_events")
    return time.perf_counter() - began
