"""Turn a results JSON of `bench.run` into docs/benchmarks.md's generated part and its charts.

docs/benchmarks.md is partly written by hand (method, diagnosis); only the part between
`<!-- results:begin -->` and `<!-- results:end -->` is replaced.

    .venv/bin/python -m bench.report bench/results/full.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _ok(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "**no**")


# Issue 17's ratios, against ceilings that measure the database alone (carts prepared).
TARGETS = {
    "checkout_spread": 0.3,
    "checkout_hot": 0.6,
    "webhook": 0.4,
    "order": 0.4,
}
LABELS = {
    "checkout_spread": "`checkout`, 2-line carts over 10,000 products",
    "checkout_hot": "`checkout`, everyone buying one hot product",
    "webhook": "webhook `checkout.session.completed` → confirmed",
    "order": "`order` query, 5 lines, by its owner",
}


def main_table(results: dict[str, Any]) -> list[str]:
    conc = results["meta"]["sizes"]["concurrency"]
    lines = [
        f"Concurrency {conc} for every row. Throughput in operations per second; latency in ms;"
        " ratio = service throughput / ceiling throughput.",
        "",
        "| scenario | workers | service /s | p50 | p99 | ceiling /s | p50 | p99 | ratio |"
        " target | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for key, label in LABELS.items():
        for workers, row in results.get("workers", {}).items():
            r = row.get(key)
            if not r:
                continue
            s, c = r["service"], r["ceiling"]
            lines.append(
                f"| {label} | {workers} | {_f(s['throughput'], 0)} | {_f(s['p50_ms'])} |"
                f" {_f(s['p99_ms'])} | {_f(c['throughput'], 0)} | {_f(c['p50_ms'])} |"
                f" {_f(c['p99_ms'])} | {r['ratio']:.2f} | ≥ {TARGETS[key]} |"
                f" {_ok(r['ratio'] >= TARGETS[key])} |"
            )
    return lines


def other_rows(results: dict[str, Any]) -> list[str]:
    lines = [
        "| scenario | measured | target | met |",
        "| --- | --- | --- | --- |",
    ]
    subs = results.get("subscriptions") or {}
    for r in subs.get("own_orders", []):
        s = r["from_commit_ms"]
        lines.append(
            f"| {r['subscribers']:,} open subscriptions on one process, each to its own order,"
            f" {r['rate']} changes/s (achieved {r['achieved_rate']:.0f}/s, {r['delivered']:,} of"
            f" {r['changes']:,} delivered) | commit to delivery p50 {_f(s['p50'])} ms,"
            f" p99 {_f(s['p99'])} ms, max {_f(s['max'])} ms | p99 < 100 ms |"
            f" {_ok(s['p99'] < 100)} |"
        )
    for r in subs.get("one_order", []):
        if r["subscribers"] == 100:
            met = r["max_ms"] is not None and r["max_ms"] < 50
            lines.append(
                f"| 100 subscribers to one order, one change | last subscriber"
                f" {_f(r['max_ms'])} ms after the webhook's 2xx (p50 {_f(r['p50_ms'])} ms); the"
                f" commit came before the 2xx, within the webhook's {_f(r['webhook_ms'])} ms |"
                f" < 50 ms | {_ok(met)}{' (from the 2xx: a lower bound)' if met else ''} |"
            )
    mems = [
        (f"{r['subscribers']:,} on one order", r["memory_per_1000_mib"])
        for r in subs.get("one_order", [])
        if r["subscribers"] >= 1000
    ] + [
        (f"{r['subscribers']:,} on their own orders", r["memory_per_1000_mib"])
        for r in subs.get("own_orders", [])
        if r["subscribers"] >= 1000
    ]
    if mems:
        worst = max(m for _, m in mems)
        lines.append(
            "| memory of idle subscriptions | "
            + "; ".join(f"{name}: {m:.1f} MiB per 1,000" for name, m in mems)
            + f" | ≤ 40 MiB per 1,000 | {_ok(worst <= 40)} |"
        )
    growth = results.get("growth") or {}
    if "base" in growth and "high" in growth:
        base, high = growth["base"], growth["high"]
        parts, met = [], True
        for kind in ("checkout", "webhook"):
            b, h = base[kind], high[kind]
            r50 = h["p50_ms"] / b["p50_ms"]
            r99 = h["p99_ms"] / b["p99_ms"]
            met = met and r50 <= 1.2
            parts.append(
                f"{kind}: p50 {_f(b['p50_ms'])} → {_f(h['p50_ms'])} ms (x{r50:.2f}),"
                f" p99 {_f(b['p99_ms'])} → {_f(h['p99_ms'])} ms (x{r99:.2f})"
            )
        conc = results["meta"]["sizes"]["growth_concurrency"]
        lines.append(
            f"| growth: {base['orders']:,} → {high['orders']:,} orders in the database"
            f" (one worker, concurrency {conc}) | " + "; ".join(parts) + " | ≤ 1.2x | "
            f"{_ok(met)} (on p50) |"
        )
    return lines


def cpu_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "CPU milliseconds per operation of each party during the measured window (from"
        " /proc; `others` is the rest of the machine, i.e. other people's work during the run):",
        "",
        "| scenario | workers | side | server | emulator | load | PostgreSQL | mail sink |"
        " others |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in LABELS.items():
        for workers, row in results.get("workers", {}).items():
            r = row.get(key)
            if not r:
                continue
            for side in ("service", "ceiling"):
                cpu = r[side].get("cpu_ms_per_op") or {}
                lines.append(
                    f"| {label} | {workers} | {side} | {_f(cpu.get('server'), 2)} |"
                    f" {_f(cpu.get('emulator'), 2)} | {_f(cpu.get('load'), 2)} |"
                    f" {_f(cpu.get('postgres'), 2)} | {_f(cpu.get('mail sink'), 2)} |"
                    f" {_f(cpu.get('others'), 2)} |"
                )
    return lines


def sql_section(results: dict[str, Any]) -> list[str]:
    sql = results.get("sql") or {}
    lines = []
    for name, r in sql.items():
        lines.append(
            f"**{name}**: {r['statements']} round trips to PostgreSQL in the request"
            f" (BEGIN/SAVEPOINT/COMMIT and asyncpg's connection reset included)"
            + (
                f", then {r['background_statements']} in the background (mail sender)"
                if r.get("background_statements")
                else ""
            )
            + ":"
        )
        lines.append("")
        lines.append("```sql")
        lines += r["sql"]
        lines.append("```")
        lines.append("")
    return lines


def profile_section(results: dict[str, Any]) -> list[str]:
    lines = []
    for kind, p in (results.get("profiles") or {}).items():
        if not p.get("samples"):
            lines.append(f"**{kind}**: no profile ({p.get('skipped') or p.get('py_spy')})")
            continue
        load = p.get("load", {})
        lines.append(
            f"**{kind}** ({p['samples']:,} on-CPU samples of the worker at"
            f" {_f(load.get('throughput'), 0)}/s):"
        )
        lines.append("")
        lines.append(
            "- by package (self time): "
            + ", ".join(f"{name} {share}%" for name, share in p["by_package"][:10])
        )
        lines.append(
            "- top self time: " + ", ".join(f"`{name}` {share}%" for name, share in p["self"][:10])
        )
        lines.append(
            "- ordergraph, inclusive: "
            + ", ".join(f"`{name}` {share}%" for name, share in p["ordergraph"][:12])
        )
        interesting = [
            (n, s)
            for n, s in p["inclusive"]
            if not n.startswith(("RequestResponseCycle", "AsyncBaseHTTPView", "Executor."))
        ][:15]
        lines.append(
            "- inclusive, all: " + ", ".join(f"`{name}` {share}%" for name, share in interesting)
        )
        lines.append("")
    return lines


def subscriptions_section(results: dict[str, Any]) -> list[str]:
    subs = results.get("subscriptions") or {}
    lines = []
    if subs.get("one_order"):
        lines += [
            "One order, every subscriber receives its one change (`bench.subscriptions`;"
            " delay from the webhook's 2xx):",
            "",
            "| subscribers | received | connect s | MiB per 1,000 | webhook ms | p50 ms |"
            " p99 ms | max ms |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in subs["one_order"]:
            lines.append(
                f"| {r['subscribers']:,} | {r['received']:,} | {_f(r['connect_seconds'])} |"
                f" {_f(r['memory_per_1000_mib'])} | {_f(r['webhook_ms'])} | {_f(r['p50_ms'])} |"
                f" {_f(r['p99_ms'])} | {_f(r['max_ms'])} |"
            )
        lines.append("")
    if subs.get("one_order_error"):
        lines += [f"`bench.subscriptions` failed: `{subs['one_order_error']}`", ""]
    if subs.get("own_orders"):
        lines += [
            "Each subscriber on its own order, changes committed with asyncpg at a steady rate"
            " (`bench.subscriptions_load`; delay from COMMIT returning, and from COMMIT sent):",
            "",
            "| subscribers | changes/s | delivered | connect s | MiB per 1,000 |"
            " p50 | p99 | max | p99 from COMMIT sent |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in subs["own_orders"]:
            s, a = r["from_commit_ms"], r["from_commit_sent_ms"]
            lines.append(
                f"| {r['subscribers']:,} | {r['achieved_rate']:.0f} |"
                f" {r['delivered']:,}/{r['changes']:,} | {_f(r['connect_seconds'])} |"
                f" {_f(r['memory_per_1000_mib'])} | {_f(s['p50'])} | {_f(s['p99'])} |"
                f" {_f(s['max'])} | {_f(a['p99'])} |"
            )
        lines.append("")
    return lines


def curve_table(results: dict[str, Any]) -> list[str]:
    curve = results.get("curve")
    if not curve:
        return []
    lines = [
        f"Checkout (2-line carts), workers={curve['workers']}:",
        "",
        "| concurrency | service /s | p50 | p99 | ceiling /s | p50 | p99 | ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in curve["points"]:
        s, c = p["service"], p["ceiling"]
        lines.append(
            f"| {p['concurrency']} | {_f(s['throughput'], 0)} | {_f(s['p50_ms'])} |"
            f" {_f(s['p99_ms'])} | {_f(c['throughput'], 0)} | {_f(c['p50_ms'])} |"
            f" {_f(c['p99_ms'])} | {p['ratio']:.2f} |"
        )
    return lines


def charts(results: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    curve = results.get("curve")
    if curve:
        pts = sorted(curve["points"], key=lambda p: p["concurrency"])
        x = [p["concurrency"] for p in pts]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for side, style in (("service", "-o"), ("ceiling", "--s")):
            left.plot(x, [p[side]["p50_ms"] for p in pts], style, label=f"{side} p50")
            left.plot(x, [p[side]["p99_ms"] for p in pts], style, alpha=0.5, label=f"{side} p99")
            right.plot(x, [p[side]["throughput"] for p in pts], style, label=side)
        left.set_yscale("log")
        left.set_xlabel("concurrent shoppers")
        left.set_ylabel("latency (ms, log)")
        left.set_title("checkout latency")
        left.legend(fontsize=8)
        right.set_xlabel("concurrent shoppers")
        right.set_ylabel("checkouts per second")
        right.set_title("checkout throughput")
        right.legend(fontsize=8)
        for ax in (left, right):
            ax.grid(alpha=0.3)
        fig.suptitle(
            f"ordergraph checkout vs asyncpg ceiling, {curve['workers']} worker(s),"
            f" {results['meta']['nproc']} cores, {results['meta']['date']}",
            fontsize=9,
        )
        fig.tight_layout()
        path = folder / "checkout-latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    subs = results.get("subscriptions") or {}
    if subs.get("one_order") or subs.get("own_orders"):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        one = sorted(subs.get("one_order", []), key=lambda r: r["subscribers"])
        if one:
            x = [r["subscribers"] for r in one]
            ax.plot(x, [r["p50_ms"] for r in one], "-o", label="one order, one change: p50")
            ax.plot(x, [r["max_ms"] for r in one], "-^", label="one order: last subscriber")
        own = sorted(subs.get("own_orders", []), key=lambda r: r["subscribers"])
        if own:
            x = [r["subscribers"] for r in own]
            ax.plot(
                x,
                [r["from_commit_ms"]["p50"] for r in own],
                ":s",
                label=f"own orders, {own[0]['rate']} changes/s: p50 from commit",
            )
            ax.plot(
                x,
                [r["from_commit_ms"]["p99"] for r in own],
                "--s",
                label="own orders: p99 from commit",
            )
        ax.axhline(100, color="grey", lw=0.8, ls="--")
        ax.axhline(50, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("open subscriptions (one server process)")
        ax.set_ylabel("delivery delay (ms)")
        ax.set_title(f"subscription delivery delay, {results['meta']['date']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / "subscription-delay.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def generated(results: dict[str, Any]) -> str:
    meta = results["meta"]
    free = meta.get("free_h", "").splitlines()
    memory = free[1].split()[1] if len(free) > 1 else "?"
    lines = [
        BEGIN,
        "",
        f"Run: `.venv/bin/{meta['command']} --workers {' '.join(map(str, meta['workers']))}`"
        f" ({meta['mode']}), {meta['date']}, {meta.get('seconds', 0) / 60:.1f} minutes.",
        f"Code: {meta.get('code', '?')}.",
        *([meta["note"]] if meta.get("note") else []),
        f"Machine: {meta['nproc']} cores ({meta['cpu']}), {memory} memory; Python"
        f" {meta['python']}; {meta['postgres']}. Load average at start"
        f" {', '.join(f'{x:.2f}' for x in meta['loadavg_start'])}, at end"
        f" {', '.join(f'{x:.2f}' for x in meta.get('loadavg_end', []))}.",
        "",
        "### The table",
        "",
        *main_table(results),
        "",
        *other_rows(results),
        "",
        "### Checkout latency against concurrency",
        "",
        "![checkout latency](benchmarks/checkout-latency.png)",
        "",
        *curve_table(results),
        "",
        "### Subscriptions",
        "",
        "![delivery delay](benchmarks/subscription-delay.png)",
        "",
        *subscriptions_section(results),
        "### Where the CPU goes",
        "",
        *cpu_table(results),
        "",
        "### SQL per request",
        "",
        *sql_section(results),
        "### Profiles",
        "",
        *profile_section(results),
        END,
    ]
    return "\n".join(lines)


def write(results: dict[str, Any], docs: Path) -> list[Path]:
    written = charts(results, docs / "benchmarks")
    path = docs / "benchmarks.md"
    block = generated(results)
    if path.exists() and BEGIN in path.read_text():
        text = path.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        path.write_text(head + block + tail)
    else:
        path.write_text("# Benchmarks\n\n" + block + "\n")
    return [path, *written]


if __name__ == "__main__":
    from bench.common import ROOT

    data = json.loads(Path(sys.argv[1]).read_text())
    for p in write(data, ROOT / "docs"):
        print(p)
