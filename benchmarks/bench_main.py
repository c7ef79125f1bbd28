#!/usr/bin/env python
"""Time the main job, `python fit.py` on the bundled trial, as a user runs it: once from empty caches
(the numba cache of the compiled models and PyTensor's compile folder both new) and once cached.

    python benchmarks/bench_main.py                  # writes benchmarks/results/main_job.json and main_job.md
    python benchmarks/bench_main.py --args --models null treatment   # other fit.py arguments

Each run is a separate process; its wall time includes start-up, compiling, sampling, the
diagnostics and writing the results folder. The per-model times come from the run's run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from inference.idata_io import load_average, machine_record  # noqa: E402


def run_once(work: Path, label: str, env: dict, extra: list[str]) -> dict:
    out = work / f"results_{label}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "fit.py"), "--out", str(out), "--quiet", *extra], cwd=work, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"run": label, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    run = json.loads((out / "run.json").read_text())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    models = {
        name: {k: round(float(v), 2) for k, v in m["timings"].items() if isinstance(v, (int, float))}
        | {"idata_mb": round(m.get("idata_bytes", 0) / 2**20, 1)}
        for name, m in run["models"].items()
    }
    report_s = round(float(run.get("diagnostics", {}).get("wall_s", float("nan"))), 2)
    return {"run": label, "wall_s": round(wall, 1), "results_mb": round(size / 2**20, 1), "models": models, "comparison_report_s": report_s}


# where a model's time goes, in the order it is spent: (label, how it is computed from run.json's timings)
STAGES = (
    ("build", lambda t: t.get("worker_wall_s", 0) - t.get("total_s", 0)),
    ("prior predictive", lambda t: t.get("prior_predictive_s")),
    ("compile", lambda t: t.get("compile_s")),
    ("sampling", lambda t: t.get("sample_s")),
    ("completing the fit", lambda t: t.get("total_s", 0) - sum(t.get(k, 0) for k in ("prior_predictive_s", "compile_s", "sample_s"))),
    ("convergence verdict", lambda t: t.get("verdict_s")),
    ("estimates and files", lambda t: t.get("finish_s", 0) - t.get("verdict_s", 0) - t.get("write_s", 0)),
    ("writing idata.nc", lambda t: t.get("write_s")),
    ("posterior predictive checks", lambda t: t.get("ppc_s")),
    ("leave-one-out", lambda t: t.get("loo_s")),
    ("figures", lambda t: t.get("figures_s")),
)


def stage_table(run: dict) -> str:
    """One column per model: the seconds of each stage of its fit in its worker (from run.json)."""
    names = list(run["models"])
    lines = ["| stage | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, value in STAGES:
        cells = []
        for name in names:
            v = value(run["models"][name])
            cells.append("-" if v is None else f"{v:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| model total in its worker | " + " | ".join(
        f"{run['models'][n].get('wall_s', 0) + run['models'][n].get('finish_s', 0) + run['models'][n].get('diagnose_s', 0):.1f}" for n in names) + " |")
    return "\n".join(lines)


def render(meta: dict, runs: list[dict]) -> str:
    load = lambda key: ", ".join(f"{x:.2f}" for x in meta[key]) + " (1, 5, 15 min)"  # noqa: E731
    lines = [
        f"Measured {meta['date']} on {meta['machine']}, {meta['cpus']} CPUs; load average at the start {load('load_start')}, "
        f"at the end {load('load_end')}. Command: `{' '.join(['python fit.py', *meta['args']])}` (the main job). "
        "Regenerate with `python benchmarks/bench_main.py` (docs/performance.md).",
        "",
        "| run | wall s | results MB | model | model wall s | compile s | sampling s | after the fit s | idata.nc MB | write s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['run']} | error: {r['error'][:200]} |")
            continue
        for i, (name, m) in enumerate(r["models"].items()):
            first = (r["run"], r["wall_s"], r["results_mb"]) if i == 0 else ("", "", "")
            after = m.get("finish_s", 0.0) + m.get("diagnose_s", 0.0)
            lines.append(f"| {first[0]} | {first[1]} | {first[2]} | {name} | {m.get('wall_s', '-')} | {m.get('compile_s', '-')} | "
                         f"{m.get('sample_s', '-')} | {after:.1f} | {m.get('idata_mb', '-')} | {m.get('write_s', '-')} |")
    for r in runs:
        if "error" in r:
            continue
        lines += ["", f"Where the time goes, run '{r['run']}' (seconds; the models' workers run side by side, one per core; "
                  f"the comparison and the report then took {r.get('comparison_report_s', float('nan')):.1f} s in the main process, "
                  "the rest of the wall time is start-up: imports and worker processes):", "", stage_table(r)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for main_job.json and main_job.md")
    ap.add_argument("--args", nargs=argparse.REMAINDER, default=[], help="further fit.py arguments")
    args = ap.parse_args(argv)
    meta = {**machine_record(), "args": args.args}
    work = Path(tempfile.mkdtemp(prefix="deptrial-main-"))
    env = {**os.environ, "DEPTRIAL_CACHE": str(work / "cache"), "PYTENSOR_FLAGS": f"base_compiledir={work / 'pytensor'}",
           "PYTHONWARNINGS": "ignore"}
    try:
        runs = [run_once(work, "empty caches", env, args.args), run_once(work, "cached", env, args.args)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["load_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "main_job.json").write_text(json.dumps({"settings": meta, "runs": runs}, indent=2) + "\n")
    text = render(meta, runs)
    (args.out / "main_job.md").write_text(text + "\n")
    print(text)
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
