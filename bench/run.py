"""``make bench``: every scenario of the benchmark, each against its baseline measured in the same run.

    python -m bench.run                  # PostgreSQL and Redis: all six scenarios (about 16 minutes)
    python -m bench.run --embedded       # the embedded defaults (SQLite, filesystem broker): scenarios 1 and 5
    python -m bench.run --only registrations,replies
    python -m bench.run --only poison    # scenario 6 alone (2 to 3 minutes)
    python -m bench.run --only webhooks  # scenario 7 alone: outbound webhooks (deliveries/s, registrations/s)

Writes ``bench/results/<date>.json`` (every figure), ``<date>.md`` (the table) and ``<date>.png`` (the
chart). Absolute figures drift with whatever else the machine does; the ratios are the result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import chart, table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCENARIOS = ("registrations", "replies", "import", "poison", "webhooks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedded", action="store_true", help="SQLite and the filesystem broker: scenarios 1 and 5")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"a comma-separated subset of {SCENARIOS}")
    parser.add_argument("--grow-to", type=int, default=1_000_000, help="leads in the database for scenario 2")
    parser.add_argument("--messages", type=int, default=1_000_000, help="stored texts for scenario 4")
    parser.add_argument("--import-rows", type=int, default=100_000)
    parser.add_argument("--memory-rows", type=int, default=1_000_000, help="rows of the import's peak-memory run")
    parser.add_argument("--webhook-deliveries", type=int, default=1000, help="deliveries of scenario 7")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    only = set(args.only.split(","))
    from leadrelay.logging import configure_logging

    # The processes under test log as configured; this one's own diagnostics (a few intakes processed
    # in-process to count their statements) would print a line each.
    configure_logging(fmt="console", level="WARNING")
    if args.embedded:
        only &= {"registrations"}

    began = time.monotonic()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_1m_before": os.getloadavg()[0]},
        "embedded": args.embedded,
    }
    with tempfile.TemporaryDirectory(prefix="leadrelay-bench-") as tmp:
        folder = Path(tmp)
        if "registrations" in only:
            from bench import registrations

            print("scenarios 1, 5, 2: registrations end to end", flush=True)
            results["registrations"] = registrations.run(
                folder / "registrations", embedded=args.embedded, grow_to=args.grow_to
            )
        if "replies" in only:
            from bench import replies

            print("scenario 4: reply routing", flush=True)
            results["replies"] = replies.run(folder / "replies", messages=args.messages)
        if "import" in only:
            from bench import import_bench

            print("scenario 3: CSV import", flush=True)
            results["import"] = import_bench.run(args.import_rows, args.memory_rows, profile=True)
        if "poison" in only:
            from bench import poison

            print("scenario 6: poison intakes among the others", flush=True)
            results["poison"] = poison.run(folder / "poison")
        if "webhooks" in only:
            from bench import webhooks_bench

            print("scenario 7: outbound webhooks", flush=True)
            results["webhooks"] = webhooks_bench.run(folder / "webhooks", deliveries=args.webhook_deliveries)
    results["seconds"] = time.monotonic() - began

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (dt.datetime.now(dt.UTC).strftime("%Y-%m-%d") + ("-embedded" if args.embedded else ""))
    rows = table(results)
    results["table"] = rows["rows"]
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(rows["markdown"])
    chart(results, stem.with_suffix(".png"))
    print(rows["markdown"])
    print(
        f"{results['seconds']:.0f} s; written: {', '.join(str(stem.with_suffix(x)) for x in ('.json', '.md', '.png'))}"
    )


if __name__ == "__main__":
    main()
