"""The benchmark's table (Markdown) and chart (PNG) from the figures ``bench.run`` collected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = {
    "throughput_ratio": 0.6,
    "p99_ms": 250.0,
    "growth_ratio": 0.9,
    "import_rows_per_s": 50_000,
    "copy_ratio": 20,
    "texts_ratio": 0.6,
    "statements": 6,
    "poison_drop_pct": 5.0,
}


def _rate(figures: dict[str, Any] | None) -> float | None:
    return None if not figures else float(figures["sustained_per_s"])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _n(x: float | None, unit: str = "") -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f}{unit}" if abs(x) >= 100 else f"{x:,.1f}{unit}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def cpu_line(figures: dict[str, Any] | None) -> str:
    """Where the cores went while the load ran: the machine's share busy, and cores per part."""
    if not figures or "cpu" not in figures:
        return ""
    cpu = figures["cpu"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu["cores_used"].items(), key=lambda kv: -kv[1]))
    locust = figures.get("load", {}).get("locust_cores")
    return f"machine {100 * cpu['machine_busy']:.0f}% busy; cores: {parts}" + (
        f", locust {locust:.2f}" if locust is not None else ""
    )


def rows_of(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(scenario: str, figure: str, value: str, baseline: str, ratio: str, target: str, verdict: str) -> None:
        rows.append(
            {
                "scenario": scenario,
                "figure": figure,
                "value": value,
                "baseline": baseline,
                "ratio": ratio,
                "target": target,
                "verdict": verdict,
            }
        )

    reg = results.get("registrations")
    if reg:
        p2, b2 = _rate(reg.get("pipeline_2")), _rate(reg.get("baseline_2"))
        r = _ratio(p2, b2)
        add(
            "1",
            "registrations, sustained (2 worker processes)",
            _n(p2, "/s"),
            _n(b2, "/s") + " no-op",
            f"{r:.2f}x" if r else "n/a",
            f">= {TARGETS['throughput_ratio']}x",
            _verdict(r >= TARGETS["throughput_ratio"] if r else None),
        )
        lat, blat = reg.get("latency"), reg.get("baseline_latency")
        if lat:
            ms = lat["ms"]
            add(
                "1",
                f"POST to assigned at {lat['rate_per_s']:.0f}/s (half load): p50 / p95 / p99",
                f"{_n(ms['p50'])} / {_n(ms['p95'])} / {_n(ms['p99'])} ms",
                f"p99 {_n(blat['ms']['p99'])} ms no-op at {blat['rate_per_s']:.0f}/s" if blat else "n/a",
                "",
                f"p99 < {TARGETS['p99_ms']:.0f} ms",
                _verdict(ms["p99"] is not None and ms["p99"] < TARGETS["p99_ms"]),
            )
        stmts = reg.get("statements_per_intake")
        if stmts:
            alone, batched = stmts["mean"], stmts.get("batched_mean")
            worst = max(stmts["per_site"].values())
            add(
                "1",
                "worker SQL statements per registration: alone (mean, worst site); under load, amortized over a batch",
                f"{alone:.1f} ({worst}); {batched:.2f}" if batched is not None else f"{alone:.1f} ({worst})",
                "1 no-op",
                "",
                f"<= {TARGETS['statements']}",
                _verdict(worst <= TARGETS["statements"])
                + (f", batched {_verdict(batched <= TARGETS['statements'])}" if batched is not None else ""),
            )
        checks = reg.get("checks", {})
        add(
            "1",
            "every accepted registration owned, de-duplicated, routed, with its timeline",
            f"{checks.get('done', 0):,} of {checks.get('accepted', 0):,} done; {checks.get('new_leads', 0):,} new leads, "
            f"{checks.get('repeats_on_preloaded', 0):,} repeats on their lead",
            "",
            "",
            "all",
            _verdict(checks.get("ok")),
        )
        if reg.get("pipeline_2_grown"):
            g = _rate(reg["pipeline_2_grown"])
            r = _ratio(g, p2)
            add(
                "2",
                f"registrations at {reg['leads_grown']:,} leads vs {reg['leads_before']:,}",
                _n(g, "/s"),
                _n(p2, "/s") + f" at {reg['leads_before']:,}",
                f"{r:.2f}x" if r else "n/a",
                f">= {TARGETS['growth_ratio']}x",
                _verdict(r >= TARGETS["growth_ratio"] if r else None),
            )
        p1, b1 = _rate(reg.get("pipeline_1")), _rate(reg.get("baseline_1"))
        if p1:
            add(
                "5",
                "registrations, 2 worker processes vs 1",
                f"{_n(p2, '/s')} vs {_n(p1, '/s')}",
                f"no-op {_n(b2, '/s')} vs {_n(b1, '/s')}",
                f"{_ratio(p2, p1) or 0:.2f}x (no-op {_ratio(b2, b1) or 0:.2f}x)",
                "where the limit is",
                cpu_line(reg.get("pipeline_2")),
            )
    rep = results.get("replies")
    if rep:
        p, b = _rate(rep.get("pipeline")), _rate(rep.get("baseline"))
        r = _ratio(p, b)
        add(
            "4",
            f"inbound texts routed (S1) with {rep.get('messages_preloaded', 0):,} stored messages",
            _n(p, "/s"),
            _n(b, "/s") + " store only",
            f"{r:.2f}x" if r else "n/a",
            f">= {TARGETS['texts_ratio']}x",
            _verdict(r >= TARGETS["texts_ratio"] if r else None),
        )
    imp = results.get("import")
    if imp:
        rate, copy_ratio = imp.get("rows_per_s"), imp.get("copy_ratio")
        add(
            "3",
            f"CSV import, {imp.get('rows', 0):,} rows",
            _n(rate, " rows/s"),
            _n(imp.get("copy_rows_per_s"), " rows/s") + " bare COPY",
            f"{copy_ratio:.1f}x slower" if copy_ratio else "n/a",
            f">= {TARGETS['import_rows_per_s']:,} rows/s, within {TARGETS['copy_ratio']}x",
            f"{_verdict(rate >= TARGETS['import_rows_per_s'] if rate else None)}, "
            f"{_verdict(copy_ratio <= TARGETS['copy_ratio'] if copy_ratio else None)}",
        )
        cpu = (imp.get("import") or {}).get("cpu_seconds")
        if cpu and imp.get("copy_seconds"):
            add(
                "3",
                "the import process's own CPU (parsing, planning, staging)",
                f"{cpu:.2f} s",
                f"{imp['copy_seconds']:.3f} s bare COPY",
                f"{cpu / imp['copy_seconds']:.1f}x slower",
                "",
                "",
            )
        floor = imp.get("write_floor")
        if floor:
            add(
                "3",
                f"PostgreSQL alone writing the import's {floor['leads']:,} leads and {floor['events']:,} events",
                f"{floor['seconds']:.2f} s",
                f"{imp.get('copy_seconds', 0):.3f} s bare COPY",
                f"{floor['copy_ratio']:.1f}x slower",
                "the least an import can take",
                "",
            )
        mem = imp.get("memory_run")
        if mem:
            add(
                "3",
                f"import peak memory, {mem['rows']:,} rows",
                f"{mem['peak_rss_mb']:.0f} MB ({mem['seconds']:.0f} s)",
                "",
                "",
                "bounded (< 300 MB)",
                _verdict(mem["peak_rss_mb"] < 300),
            )
    poison = results.get("poison")
    if poison:
        drop, error = poison["drop_pct"], poison["drop_stderr_pct"]
        add(
            "6",
            f"signups with {poison['poison_per_round']} poison intake in each {poison['per_round']} "
            f"(retried {poison['max_retries']}x, then dead), {len(poison['rounds'])} rounds",
            f"{_n(poison['poisoned_per_s'], '/s')}: drop {drop:.1f}% (± {error:.1f})",
            f"{_n(poison['clean_per_s'], '/s')} the other lane, no poison",
            f"{poison['ratio']:.3f}x",
            f"drop < {TARGETS['poison_drop_pct']:.0f}%",
            _verdict(drop < TARGETS["poison_drop_pct"]) + ("" if poison["decided"] else " (within 2 errors)"),
        )
    hooks = results.get("webhooks")
    if hooks:
        d, bare = hooks["deliveries"].get("per_s"), hooks["bare_posts"].get("per_s")
        r = _ratio(d, bare)
        add(
            "7",
            "outbound webhook deliveries (2 worker processes)",
            _n(d, "/s"),
            _n(bare, "/s") + " bare POSTs",
            f"{r:.2f}x" if r else "n/a",
            "",
            "",
        )
        with_hook = hooks["registrations_one_webhook_all_events_per_s"]
        without = hooks["registrations_no_webhook_per_s"]
        add(
            "7",
            "registrations with one endpoint subscribed to every event",
            _n(sorted(with_hook)[len(with_hook) // 2], "/s"),
            _n(sorted(without)[len(without) // 2], "/s") + " none",
            f"{hooks['registrations_ratio']:.2f}x",
            "",
            "",
        )
    return rows


def table(results: dict[str, Any]) -> dict[str, Any]:
    rows = rows_of(results)
    lines = [
        f"# leadrelay benchmark, {results['date']}",
        "",
        f"{results['machine']['cpus']} cores, Python {results['machine']['python']}, "
        f"{'embedded defaults (SQLite, filesystem broker)' if results.get('embedded') else 'PostgreSQL and Redis'}; "
        f"the whole run took {results.get('seconds', 0):.0f} s.",
        "",
        "| # | figure | value | baseline (same run) | ratio | target | verdict |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['scenario']} | {r['figure']} | {r['value']} | {r['baseline']} | {r['ratio']} | {r['target']} | {r['verdict']} |"
            for r in rows
        ),
        "",
    ]
    return {"rows": rows, "markdown": "\n".join(lines)}


def chart(results: dict[str, Any], path: Path) -> None:
    """Throughput of each scenario next to its baseline, and latency at half load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reg = results.get("registrations") or {}
    bars: list[tuple[str, float | None, float | None, str]] = []
    if reg.get("pipeline_2"):
        bars.append(("1: registrations\n2 processes", _rate(reg["pipeline_2"]), _rate(reg["baseline_2"]), "no-op"))
    if reg.get("pipeline_1"):
        bars.append(("5: registrations\n1 process", _rate(reg["pipeline_1"]), _rate(reg["baseline_1"]), "no-op"))
    if reg.get("pipeline_2_grown"):
        bars.append(
            (f"2: at {reg['leads_grown']:,}\nleads", _rate(reg["pipeline_2_grown"]), _rate(reg["pipeline_2"]), "10k")
        )
    rep = results.get("replies") or {}
    if rep.get("pipeline"):
        bars.append(("4: inbound texts", _rate(rep["pipeline"]), _rate(rep.get("baseline")), "store only"))
    poison = results.get("poison") or {}
    if poison.get("rounds"):
        bars.append(("6: with poison\nintakes", poison["poisoned_per_s"], poison["clean_per_s"], "no poison"))

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [3, 2, 1.4]})
    xs = range(len(bars))
    width = 0.38
    ax1.bar([x - width / 2 for x in xs], [b[1] or 0 for b in bars], width, label="leadrelay", color="#2f6db5")
    ax1.bar([x + width / 2 for x in xs], [b[2] or 0 for b in bars], width, label="baseline", color="#b0b0b0")
    for x, b in zip(xs, bars, strict=True):
        if b[1] and b[2]:
            ax1.annotate(f"{b[1] / b[2]:.2f}x", (x - width / 2, b[1]), ha="center", va="bottom", fontsize=9)
            ax1.annotate(b[3], (x + width / 2, b[2]), ha="center", va="bottom", fontsize=8, color="#555")
    ax1.set_xticks(list(xs), [b[0] for b in bars], fontsize=8)
    ax1.set_ylabel("sustained per second")
    ax1.set_title("Throughput, each against its baseline")
    ax1.legend()

    lat, blat = reg.get("latency"), reg.get("baseline_latency")
    if lat:
        qs = ("p50", "p95", "p99")
        ax2.bar(
            [i - width / 2 for i in range(3)],
            [lat["ms"][q] or 0 for q in qs],
            width,
            label="registration",
            color="#2f6db5",
        )
        if blat:
            ax2.bar(
                [i + width / 2 for i in range(3)],
                [blat["ms"][q] or 0 for q in qs],
                width,
                label="no-op",
                color="#b0b0b0",
            )
        ax2.axhline(TARGETS["p99_ms"], color="#c0392b", linestyle="--", label="p99 target")
        ax2.set_xticks(range(3), qs)
        ax2.set_ylabel("ms, POST to assigned")
        ax2.set_title("Latency at half the sustained rate")
        ax2.legend()

    imp = results.get("import") or {}
    if imp.get("rows_per_s"):
        ax3.bar(
            ["import", "bare COPY"], [imp["rows_per_s"], imp.get("copy_rows_per_s") or 0], color=["#2f6db5", "#b0b0b0"]
        )
        ax3.axhline(TARGETS["import_rows_per_s"], color="#c0392b", linestyle="--", label="target")
        ax3.set_yscale("log")
        ax3.set_ylabel("rows per second (log)")
        ax3.set_title("3: CSV import")
        ax3.legend()
    fig.suptitle(f"leadrelay benchmark {results['date']} ({results['machine']['cpus']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
