"""The CSV import benchmark: rows/s of a full import against a bare ``COPY`` of the same
file, measured in one run on this machine's PostgreSQL, and the import process's peak memory.

    python -m bench.import_bench                    # 100,000 rows, then 1,000,000 for memory
    python -m bench.import_bench --memory-rows 0    # skip the memory run
    python -m bench.import_bench --profile          # and where the 100,000-row import spends its time

``run()`` is the same, for ``bench/run.py``: it returns the figures as a JSON-able dict.

It creates a database of its own (dropped at the end), an account with an office of three agents
dealt round robin, and a generated file with 2% repeated people and 1% malformed rows. The import
runs in a child process (``leadrelay import``'s code path, in-process), so its peak RSS is its own.
Targets: at least 50,000 rows/s, within 20x of COPY, under 300 MB for 1,000,000 rows.

Beside them, the import process's own CPU time (``cpu_seconds``), and ``write_floor``: PostgreSQL alone writing the leads and events the import made (SQL from
``generate_series``, in a third database of the same schema), against the same COPY. That is the least
any import of the file can take here, whatever its Python does; the CPU time is the least its Python
takes. With two cores the two overlap at best, so an import/COPY target below the larger cannot be met
here without writing less (fewer indexes, foreign keys or events per lead) or planning in less Python.

With ``profile``, py-spy samples the 100,000-row child (wall clock, idle included, without pausing
it) and ``profile_top`` lists the project functions with the most time of their own, where time in
a library (psycopg waiting for the database, csv, dataclasses) counts for the project function that
called it: ``models/imports.py:330 insert_leads 31%`` names the function's busiest line.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PG_ADMIN = os.environ.get("LEADRELAY_BENCH_PG_ADMIN", "postgresql://root@127.0.0.1:5432/postgres")
HEADER = ["First Name", "Last Name", "Email", "Phone", "Tags", "Price", "Zip", "Notes", "Source"]
TARGET_ROWS_PER_S = 50_000
TARGET_COPY_RATIO = 20
TARGET_MEMORY_MB = 300
PROFILE_RATE = 100  # samples per second
PROFILE_TOP = 10
# Frames under these folders are the project's; a sample's time goes to its innermost project frame.
PROJECT = ("workers/", "models/", "rules/", "intake/", "leadrelay/", "bench/")

ORG: dict[str, Any] = {
    "account": "bench",
    "name": "Bench Realty",
    "duplication": True,
    "intake_keys": ["bench-key"],
    "entities": [
        {"id": "co", "kind": "company", "name": "Bench Realty"},
        {"id": "downtown", "kind": "office", "parent": "co", "name": "Downtown"},
        *({"id": a, "kind": "agent", "name": a.title(), "office": "downtown"} for a in ("ann", "bob", "cat")),
    ],
    "users": [{"id": "oscar", "name": "Oscar Office", "admin_of": ["downtown"], "token": "bench-oscar"}],
    "routing": [{"entity": "downtown", "rules": [{"name": "Round robin", "agents": ["ann", "bob", "cat"]}]}],
}


def generate(path: Path, rows: int, seed: int = 7) -> None:
    """A realistic export: 2% of rows repeat an earlier person, 1% have a broken email."""
    rnd = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for i in range(rows):
            j = i if rnd.random() > 0.02 else rnd.randrange(max(i, 1))
            email = f"person{j}@example{j % 97}.com" if rnd.random() > 0.01 else "broken-at-example"
            writer.writerow(
                [
                    f"First{j}",
                    f"Last{j}",
                    email,
                    f"(555) {200 + j % 800:03d}-{j % 10000:04d}",
                    "#buyer #csv",
                    f"${rnd.randrange(100, 2000) * 1000:,}",
                    f"{j % 100000:05d}",
                    "met at the open house" if j % 5 == 0 else "",
                    "Open house",
                ]
            )


def database() -> tuple[str, str]:
    name = f"leadrelay_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def drop(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def bare_copy(url: str, path: Path) -> float:
    """The baseline: the same file into an empty table of text columns, nothing else."""
    with psycopg.connect(url) as conn:
        conn.execute(f"CREATE TABLE bench_copy ({', '.join(f'c{i} text' for i in range(len(HEADER)))})")
        conn.commit()
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy("COPY bench_copy FROM STDIN (FORMAT csv, HEADER true)") as copy,
            path.open("rb") as f,
        ):
            while data := f.read(1 << 20):
                copy.write(data)
        conn.commit()
        seconds = time.perf_counter() - started
        conn.execute("DROP TABLE bench_copy")
        conn.commit()
    return seconds


def write_floor(url: str, leads: int, notes: int) -> dict[str, Any]:
    """What PostgreSQL alone takes to write what an import of the file must leave: ``leads`` leads of the
    office dealt to its three agents, each with its ``created`` and ``routed`` events, and ``notes`` of them
    a ``note`` event, made by SQL from ``generate_series`` in one transaction on this schema (its indexes,
    its foreign keys, the events' checked at the commit as the import's are). No file, no Python, no staging:
    the least an import of these rows can cost on this database, against the same bare COPY."""
    with psycopg.connect(url) as conn:
        account = conn.execute("SELECT id FROM accounts WHERE slug = 'bench'").fetchone()
        slugs = dict(conn.execute("SELECT slug, id FROM entities WHERE slug IN ('downtown', 'ann', 'bob', 'cat')"))
        assert account is not None, "the bench org is applied"
        assert len(slugs) == 4, "the bench org's office and agents"
        conn.commit()
        args = {"account": account[0], "owner": slugs["downtown"], "n": leads, "notes": notes}
        args.update(agents=[slugs["ann"], slugs["bob"], slugs["cat"]])
        lead_id = "('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid"
        started = time.perf_counter()
        conn.execute("SET CONSTRAINTS ALL DEFERRED")  # as the import defers its events' lead check
        conn.execute(
            "INSERT INTO timeline_events (account_id, lead_id, at, kind, actor, summary, data, intake_id) "
            f"SELECT %(account)s, {lead_id}, now(), k.kind, k.actor, k.summary, k.data, "
            "'6f1d1c1e-1e0b-4e53-9b39-5c7a1a6a0c11'::uuid FROM generate_series(1, %(n)s) i CROSS JOIN (VALUES "
            "('created', 'oscar', 'Imported from leads.csv by oscar', "
            """'{"reasons": ["O1: imported by oscar for Downtown"], "file": "leads.csv"}'::jsonb), """
            "('routed', 'system', 'Assigned to Ann by Round robin', "
            """'{"rule": "Round robin", "agent": "ann", "turn": 1}'::jsonb)) AS k (kind, actor, summary, data) """
            "UNION ALL "
            f"SELECT %(account)s, {lead_id}, now(), 'note', 'oscar', 'met at the open house', "
            """'{"file": "leads.csv"}'::jsonb, '6f1d1c1e-1e0b-4e53-9b39-5c7a1a6a0c11'::uuid """
            "FROM generate_series(1, %(notes)s) i",
            args,
        )
        conn.execute(
            "INSERT INTO leads (id, account_id, owner_entity_id, assigned_agent_id, routed_via_entity_id, "
            "unique_key, status, in_pond, email, email_normalized, phone_e164, first_name, last_name, tags, "
            "price_min, price_max, zip, source_kind, source_detail, email_unsubscribed, sms_unsubscribed, "
            "created_by_intake_id, created_at, updated_at, last_activity_at) "
            f"SELECT {lead_id}, %(account)s, %(owner)s, (%(agents)s::int[])[1 + i %% 3], %(owner)s, "
            "'email:' || %(owner)s || ':person' || i || '@example' || (i %% 97) || '.com', 'active', false, "
            "'person' || i || '@example' || (i %% 97) || '.com', 'person' || i || '@example' || (i %% 97) || '.com', "
            "'+1555' || lpad((2000000 + i)::text, 7, '0'), 'First' || i, 'Last' || i, '[\"buyer\", \"csv\"]', "
            "i * 1000, i * 1000, lpad((i %% 100000)::text, 5, '0'), 'import', 'Open house', false, false, "
            "'6f1d1c1e-1e0b-4e53-9b39-5c7a1a6a0c12', now(), now(), now() FROM generate_series(1, %(n)s) i "
            "ON CONFLICT (account_id, unique_key) DO NOTHING",
            args,
        )
        conn.commit()
        seconds = time.perf_counter() - started
    return {"leads": leads, "events": 2 * leads + notes, "seconds": seconds}


def child_env(url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADRELAY_")}
    env.update(
        LEADRELAY_ENV="test",
        LEADRELAY_DATABASE_URL=url.replace("postgresql://", "postgresql+psycopg://"),
        LEADRELAY_DATA_DIR=str(data_dir),
        LEADRELAY_LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    return env


def import_in_child(env: dict[str, str], path: Path, profile_to: Path | None = None) -> dict[str, Any]:
    """One import of ``path`` in a child process (its figures), under py-spy if ``profile_to`` is given."""
    command = [sys.executable, "-m", "bench.import_bench", "--child", str(path)]
    if profile_to is not None:
        command = [
            py_spy(),
            "record",
            "--idle",
            "--nonblocking",
            "--rate",
            str(PROFILE_RATE),
            "--format",
            "speedscope",
            "--output",
            str(profile_to),
            "--",
            *command,
        ]
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    figures = next(line for line in reversed(out.stdout.splitlines()) if line.startswith("{"))
    return dict(json.loads(figures))


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy) and profile=True asks for it")
    return found


def profile_top(speedscope: Path, top: int = PROFILE_TOP) -> list[str]:
    """The project functions with the most time of their own in a py-spy speedscope file, busiest first:
    ``"models/imports.py:330 insert_leads 31%"`` (the function's busiest line, its share of the samples)."""
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]

    def project(index: int) -> tuple[str, str, int] | None:
        frame = frames[index]
        file = str(frame.get("file") or "")
        rel = file[len(str(ROOT)) + 1 :] if file.startswith(str(ROOT) + os.sep) else ""
        if not rel.startswith(PROJECT) or rel.startswith(".venv"):
            return None
        return rel, str(frame["name"]), int(frame.get("line") or 0)

    lines: dict[tuple[str, str], dict[int, float]] = {}
    total = 0.0
    for thread in data["profiles"]:
        for stack, weight in zip(thread["samples"], thread["weights"], strict=True):
            total += weight
            found = next((p for p in map(project, reversed(stack)) if p is not None), None)
            if found is None:
                continue
            rel, name, line = found
            per_line = lines.setdefault((rel, name), {})
            per_line[line] = per_line.get(line, 0.0) + weight
    ranked = sorted(lines.items(), key=lambda item: sum(item[1].values()), reverse=True)[:top]
    return [
        f"{rel}:{max(per_line, key=lambda n: per_line[n])} {name} {100 * sum(per_line.values()) / total:.0f}%"
        for (rel, name), per_line in ranked
    ]


def child(path: Path) -> None:
    """In the child: one import of ``path`` for the office, timed, and this process's peak RSS."""
    from sqlalchemy import text

    from leadrelay.logging import configure_logging
    from models.uow import UnitOfWork
    from workers.imports import create_import, file_chunks, run_import

    configure_logging(fmt="json", level="WARNING")
    with UnitOfWork() as uow:
        account = uow.orgs.account_by_slug("bench")
        assert account is not None
        caller = uow.orgs.caller_by_slug(account.id, "oscar")
        assert caller is not None
        import_id = create_import(uow, caller=caller, owner_slug="downtown", filename=path.name, mapping={})
        uow.commit()
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = run_import(import_id, file_chunks(str(path)))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    with UnitOfWork() as uow:
        per_agent = dict(
            uow.session.execute(
                text(
                    "SELECT e.slug, count(*) FROM leads l JOIN entities e ON e.id = l.assigned_agent_id "
                    "WHERE l.created_by_intake_id = :i GROUP BY e.slug ORDER BY e.slug"
                ),
                {"i": import_id},
            ).all()
        )
        events, notes = uow.session.execute(
            text("SELECT count(*), count(*) FILTER (WHERE kind = 'note') FROM timeline_events")
        ).one()
    print(
        json.dumps(
            {
                "rows": summary.rows,
                "created": summary.created,
                "existing": summary.existing,
                "duplicates": summary.duplicates,
                "rejected": summary.rejected,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "per_agent": per_agent,
                "events": events,
                "notes": notes,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def setup(url: str, data_dir: Path) -> dict[str, str]:
    import yaml

    env = child_env(url, data_dir)
    org_file = data_dir / "org.yaml"
    org_file.write_text(yaml.safe_dump(ORG))
    for args in (["db", "upgrade"], ["org", "apply", str(org_file)]):
        subprocess.run([sys.executable, "-m", "leadrelay", *args], env=env, cwd=ROOT, check=True, capture_output=True)
    return env


def run(rows: int = 100_000, memory_rows: int = 1_000_000, profile: bool = False) -> dict[str, Any]:
    """The import scenario: ``rows`` imported against a bare COPY of the same file in one run, then
    ``memory_rows`` (0: none) for the peak memory, each in a database of its own. JSON-able figures."""
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rows": rows,
        "targets": {"rows_per_s": TARGET_ROWS_PER_S, "copy_ratio": TARGET_COPY_RATIO, "memory_mb": TARGET_MEMORY_MB},
    }
    with tempfile.TemporaryDirectory(prefix="leadrelay-bench-") as tmp:
        work = Path(tmp)
        path = work / "leads.csv"
        generate(path, rows)
        name, url = database()
        try:
            env = setup(url, work)
            results["copy_seconds"] = copy_seconds = bare_copy(url, path)
            profiled = work / "profile.json" if profile else None
            results["import"] = figures = import_in_child(env, path, profiled)
        finally:
            drop(name)
        if profiled is not None:
            results["profile_top"] = profile_top(profiled)
        # The same leads and events written by PostgreSQL alone, in a database of their own.
        name, url = database()
        try:
            setup(url, work)
            results["write_floor"] = write_floor(url, figures["created"], figures["notes"])
        finally:
            drop(name)
        if memory_rows:
            big = work / "big.csv"
            generate(big, memory_rows, seed=11)
            name, url = database()
            try:
                env = setup(url, work)
                results["memory_run"] = import_in_child(env, big)
            finally:
                drop(name)
    results["rows_per_s"] = rows / figures["seconds"]
    results["copy_rows_per_s"] = rows / copy_seconds
    results["copy_ratio"] = figures["seconds"] / copy_seconds
    results["write_floor"]["copy_ratio"] = results["write_floor"]["seconds"] / copy_seconds
    memory = results.get("memory_run")
    results["met"] = {
        "rows_per_s": results["rows_per_s"] >= TARGET_ROWS_PER_S,
        "copy_ratio": results["copy_ratio"] <= TARGET_COPY_RATIO,
        "memory_mb": memory["peak_rss_mb"] < TARGET_MEMORY_MB if memory else None,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--memory-rows", type=int, default=1_000_000, help="0 skips the peak-memory run")
    parser.add_argument("--profile", action="store_true", help="py-spy the import: where its time goes")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    results = run(args.rows, args.memory_rows, profile=args.profile)
    report(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"import-{dt.datetime.now(dt.UTC).date().isoformat()}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}")


def report(r: dict[str, Any]) -> None:
    run = r["import"]
    ok = "meets" if r["rows_per_s"] >= TARGET_ROWS_PER_S else "misses"
    print(
        f"import of {r['rows']:,} rows (created {run['created']:,}, duplicates in the file {run['duplicates']:,}, "
        f"rejected {run['rejected']:,}); round robin per agent: {run['per_agent']}"
    )
    print("| figure | value | target | |\n|---|---|---|---|")
    print(
        f"| import | {run['seconds']:.2f} s, {r['rows_per_s']:,.0f} rows/s | >= {TARGET_ROWS_PER_S:,} rows/s | {ok} |"
    )
    ratio_ok = "meets" if r["copy_ratio"] <= TARGET_COPY_RATIO else "misses"
    print(f"| bare COPY of the same file | {r['copy_seconds']:.3f} s | | |")
    print(f"| import / COPY | {r['copy_ratio']:.1f}x | <= {TARGET_COPY_RATIO}x | {ratio_ok} |")
    print(
        f"| the import process's own CPU (parsing, planning, staging; both its threads) "
        f"| {run['cpu_seconds']:.2f} s, {run['cpu_seconds'] / r['copy_seconds']:.1f}x COPY | | |"
    )
    floor = r["write_floor"]
    print(
        f"| PostgreSQL alone writing the same {floor['leads']:,} leads and {floor['events']:,} events "
        f"| {floor['seconds']:.2f} s, {floor['copy_ratio']:.1f}x COPY | the least an import can take | |"
    )
    print(f"| peak RSS, {r['rows']:,} rows | {run['peak_rss_mb']:.0f} MB | | |")
    if "memory_run" in r:
        mem = r["memory_run"]
        mem_ok = "meets" if mem["peak_rss_mb"] < TARGET_MEMORY_MB else "misses"
        print(
            f"| peak RSS, {mem['rows']:,} rows | {mem['peak_rss_mb']:.0f} MB ({mem['seconds']:.0f} s) "
            f"| < {TARGET_MEMORY_MB} MB | {mem_ok} |"
        )
    for line in r.get("profile_top", []):
        print(f"  {line}")


if __name__ == "__main__":
    main()
