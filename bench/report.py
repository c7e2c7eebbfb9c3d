"""Turn a benchmark result (the JSON :mod:`bench.run` writes) into Markdown and a PNG.

Re-render from a saved result without re-running anything::

    .venv/bin/python -m bench.report docs/bench/bench-2026-11-21.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["markdown", "write_chart", "write_report"]

MiB = 1 << 20


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.0%}"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# axlpy benchmark, {result['date']} ({result['mode']} mode)",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_bytes'] / (1 << 30):.1f} GiB RAM, "
        f"kernel {m['kernel']}, Python {m['python']}, axlpy {m['axlpy_commit']}.",
        "",
        *[f"- {k} scratch: {v}" for k, v in m["fs"].items()],
        f"- {m['tools']['cp']}; {m['tools']['rsync']}",
        f"- page cache: **{result['cache']}** on disk scenarios (see each scenario); "
        f"{result['reps']} interleaved rounds per scenario; load average at start "
        f"{result['load_at_start'][0]:.2f}, at end {result.get('load_at_end', [0])[0]:.2f}",
        f"- DEFAULT transfer type ran the `{result['default_engine']}`; tools or transfer "
        f"types not available here: {result['skipped_types'] or 'none'}",
        f"- command: `{result['command']}`",
        "",
        "Time is wall-clock seconds for the whole copy including making it durable: "
        "`cp -r` + `sync`, `rsync -a` + `sync`, `shutil.copytree` + `os.sync()` (no sync "
        "on tmpfs), axlpy from `Journal(path)` to `wait()` returning (every file fsynced, "
        "renamed, directories fsynced, journal COMPLETED). axlpy and copytree times exclude "
        "the Python interpreter start-up of their child process; *ratio (process)* "
        "compares whole process wall times instead. Ratio = median throughput of the tool / "
        "median throughput of `cp -r` (higher is better); *ratio vs copytree* the same "
        "against `shutil.copytree` + `os.sync()`, both peers measured in the same run.",
        "",
    ]
    for s in result["scenarios"]:
        lines += [
            f"## {s['name']} ({s['total_bytes'] / MiB:.0f} MiB"
            + (f", {s['empty_dirs']} empty dirs" if s.get("empty_dirs") else "")
            + f" on {s['where']})",
            "",
            f"Cache: {s['cache']}. Clean-up between runs: {s['cleanup']}.",
            "",
            "| tool | min s | median s | max s | MiB/s (median) | ratio vs cp | "
            "ratio vs copytree | ratio (process) | peak RSS MiB | journal commits |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, v in s["summary"].items():
            r = s["ratios_vs_cp"].get(name, {})
            rc = s.get("ratios_vs_copytree", {}).get(name)
            vs_copytree = f"{rc['ratio']:.2f}" if rc else ""
            share = v.get("journal_commit_share_median")
            commits = (f"{_pct(share)} ({v['journal_commits_median']:.0f} tx)"
                       if share is not None else "")
            lines.append(
                f"| {name} | {v['min_s']:.3f} | {v['median_s']:.3f} | {v['max_s']:.3f} | "
                f"{v['mib_s_median']:.1f} | {r.get('ratio', 0):.2f} | {vs_copytree} | "
                f"{r.get('ratio_process_wall', 0):.2f} | {v['rss_max_kib'] / 1024:.1f} | "
                f"{commits} |")
        lines.append("")
    res = result.get("resume")
    if res:
        lines += [
            f"## Resume start-up ({res['scenario']})",
            "",
            res["method"] + ".",
            "",
            "| rep | files published before kill | start-up s | start-up incl. process "
            "set-up s | whole resume s | peak RSS MiB |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["runs"]:
            lines.append(f"| {r['rep']} | {r['files_done_before']} | {r['startup_s']:.3f} | "
                         f"{r['startup_fresh_process_s']:.3f} | {r['resume_s']:.3f} | "
                         f"{r['rss_kib'] / 1024:.1f} |")
        lines += ["", f"Start-up min / median / max: {res['startup_min_s']:.3f} / "
                  f"{res['startup_median_s']:.3f} / {res['startup_max_s']:.3f} s.", ""]
    if result.get("targets"):
        lines += ["## Targets (median ratios, same run)", "",
                  "| target | measured | met |", "|---|---:|---|"]
        for t in result["targets"]:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
        lines.append("")
    return "\n".join(lines)


def write_chart(result: dict[str, Any], path: Path) -> None:
    """Two panels: throughput relative to ``cp -r`` (min..max whiskers), and MiB/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scen = result["scenarios"]
    tools = result["tools"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 8.5), sharex=True)
    width = 0.8 / max(1, len(tools))
    for i, tool in enumerate(tools):
        xs, rel, lo, hi, mibs = [], [], [], [], []
        for k, s in enumerate(scen):
            v = s["summary"].get(tool)
            cp = s["summary"].get("cp -r")
            if not v or not cp:
                continue
            xs.append(k + (i - (len(tools) - 1) / 2) * width)
            r = cp["median_s"] / v["median_s"]
            rel.append(r)
            lo.append(r - cp["median_s"] / v["max_s"])
            hi.append(cp["median_s"] / v["min_s"] - r)
            mibs.append(v["mib_s_median"])
        ax1.bar(xs, rel, width, yerr=[lo, hi], capsize=2, label=tool)
        ax2.bar(xs, mibs, width, label=tool)
    ax1.axhline(1.0, color="black", linewidth=0.8)
    ax1.set_ylabel("throughput / cp -r (median;\nwhiskers: slowest..fastest run)")
    ax2.set_ylabel("MiB/s (median)")
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(scen)))
    ax2.set_xticklabels([s["name"] for s in scen], fontsize=9)
    ax1.legend(fontsize=8, ncol=4, loc="upper left")
    m = result["machine"]
    fig.suptitle(f"axlpy vs cp -r && sync, rsync -a && sync, copytree + os.sync() — "
                 f"{result['date']}, {result['cache']} cache\n{m['nproc']} CPUs, "
                 f"{m['ram_bytes'] / (1 << 30):.0f} GiB, kernel {m['kernel']}, "
                 f"{m['fs'].get('disk', '?').split(' (')[0]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict[str, Any], stem: Path) -> list[Path]:
    """Write ``stem``.json, .md and .png; return their paths."""
    js, md, png = stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")
    js.write_text(json.dumps(result, indent=1) + "\n")
    md.write_text(markdown(result) + f"\n![chart]({png.name})\n")
    write_chart(result, png)
    return [js, md, png]


if __name__ == "__main__":
    src = Path(sys.argv[1])
    paths = write_report(json.loads(src.read_text()), src.with_suffix(""))
    print("wrote", *paths)
