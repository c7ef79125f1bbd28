#!/usr/bin/env python
"""Every registered model on the bundled trial: its fit from empty caches and cached, as `fit.py --model NAME` runs it.

    python benchmarks/bench_models.py                     # writes benchmarks/results/models.json and models.md
    python benchmarks/bench_models.py --models mmrm headline --draws 500

Per model, two runs in new processes: from empty caches (a new numba cache of the compiled models
and a new PyTensor compile folder) and cached (the same caches again). Reported from the run's
run.json and convergence.csv: compile and sampling time, the model's wall time in the worker, the
process wall time, whether the log density was the fused one (inference/kernels*.py) or the
compiled graph, divergences and the minimum bulk and tail ESS over the model's parameters. The
targets the project holds itself to (docs/performance.md) are checked in the last column: cold
compile at most 15 s, sampling at most 5 s, no divergence, minimum bulk ESS at least 400.

    python benchmarks/bench_models.py --models mmrm --trial bcva --out /tmp/bench   # a simulated trial instead

--trial fits a simulated trial instead of the bundled one (TRIALS: participants, post-baseline visits,
sites, drop-out and intermittent missingness, drawn by data.simulate_trial with seed 11):
`bcva` the size of the mmrm package's BCVA benchmark (1,000 participants, 10 post-baseline visits,
20 sites, about 9,870 post-baseline scores after drop-out), `bcva10` ten times its participants, `visits20` 300
participants and 20 post-baseline visits. Each run also reports its peak memory (the largest
resident set of the fit.py process and the processes it waited for) and the fit's peak by the end of
sampling (before the groups computed from the draws: log-likelihoods and predictions).
"""

from __future__ import annotations

import argparse
import csv
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
from inference.idata_io import load_average, machine_record, measured_on  # noqa: E402

# the targets each trial's runs are held to (docs/performance.md): compile from empty caches, sampling, divergences,
# minimum bulk ESS; the simulated trials also the whole process cached and the peak memory
TARGETS = {"compile_s": 10.0, "sample_s": 5.0, "divergences": 0, "min_bulk_ess": 400.0}
TRIAL_TARGETS = {
    "bundled": TARGETS,
    "bcva": {**TARGETS, "sample_s": 3.0, "process_cached_s": 10.0},
    "bcva10": {**TARGETS, "sample_s": 10.0, "peak_mb": 4096.0},
    "visits20": {**TARGETS, "sample_s": 5.0},
}
TARGET_WORDS = {
    "compile_s": "compile from empty caches at most {:g} s", "sample_s": "sampling at most {:g} s", "divergences": "{:g} divergences",
    "min_bulk_ess": "minimum bulk ESS at least {:g}", "process_cached_s": "the whole process cached at most {:g} s",
    "peak_mb": "peak memory under {:g} MB",
}
# simulated trials: participants, post-baseline weeks (every 2 weeks, or weekly), sites, drop-out by the last visit,
# intermittent missed visits
TRIALS = {
    "bcva": (1000, tuple(range(0, 21, 2)), 20, 0.03, 0.0),
    "bcva10": (10000, tuple(range(0, 21, 2)), 20, 0.03, 0.0),
    "visits20": (300, tuple(range(0, 21)), 4, 0.25, 0.03),
}


def trial_size(name: str) -> str:
    """TRIALS[name] in words."""
    n, weeks, sites, dropout, intermittent = TRIALS[name]
    return (f"({n:,} participants, {len(weeks) - 1} post-baseline visits, {sites} sites, drop-out {dropout:g} by the last visit, "
            f"intermittent {intermittent:g}; data.simulate_trial seed 11)")


def make_trial(name: str, folder: Path) -> Path:
    """The simulated trial TRIALS[name], written under `folder` (data.simulate_trial, seed 11)."""
    from data import TrialParameters, simulate_trial

    n, weeks, sites, dropout, intermittent = TRIALS[name]
    out = folder / f"trial_{name}"
    labels = tuple(f"site{j + 1:02d}" for j in range(sites))
    simulate_trial(TrialParameters(n_participants=n, seed=11, weeks=weeks, sites=labels, site_weights=(1.0 / sites,) * sites,
                                   dropout_by_last_week=dropout, intermittent_missing=intermittent)).write(out)
    return out


def run_model(name: str, work: Path, label: str, env: dict, args) -> dict:
    out = work / f"{name}_{label}"
    cmd = [sys.executable, str(ROOT / "fit.py"), "--model", name, "--out", str(out), "--quiet", "--seed", str(args.seed),
           "--draws", str(args.draws), "--tune", str(args.tune), "--chains", str(args.chains)]
    if args.data is not None:
        cmd += ["--data", str(args.data)]
    t0 = time.perf_counter()
    with open(work / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of the fit and the processes it waited for
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1) or not (out / "run.json").exists():
        return {"model": name, "run": label, "error": f"exit {proc.returncode}: {(work / 'stderr.txt').read_text().strip()[-300:]}"}
    run = json.loads((out / "run.json").read_text())
    m = run["models"][name]
    t = m["timings"]
    with open(out / name / "convergence.csv") as fh:
        rows = list(csv.DictReader(fh))
    bulk = [float(r["ess_bulk"]) for r in rows if r.get("ess_bulk") not in (None, "", "nan")]
    tail = [float(r["ess_tail"]) for r in rows if r.get("ess_tail") not in (None, "", "nan")]
    return {
        "model": name,
        "run": label,
        "process_s": round(wall, 1),
        "model_wall_s": round(float(t.get("wall_s", float("nan"))), 1),
        "compile_s": round(float(t["compile_s"]), 1),
        "sample_s": round(float(t["sample_s"]), 2),
        "log_density": {1.0: "fused", 0.0: "graph"}.get(t.get("fused_log_density"), "-"),
        "divergences": int(m.get("divergences", -1)),
        "min_bulk_ess": min(bulk) if bulk else float("nan"),
        "min_tail_ess": min(tail) if tail else float("nan"),
        "converged": bool(m.get("converged")),
        "peak_mb": round(usage.ru_maxrss / 1024.0, 1),
        "peak_sampling_mb": round(float(t.get("peak_rss_sampling_mb", float("nan"))), 1),
    }


def meets(r: dict, trial: str = "bundled") -> str:
    t = TRIAL_TARGETS[trial]
    missed = []
    if r["run"] == "empty caches" and r["compile_s"] > t["compile_s"]:
        missed.append("compile")
    if r["sample_s"] > t["sample_s"]:
        missed.append("sampling")
    if r["divergences"] != t["divergences"]:
        missed.append("divergences")
    if not r["min_bulk_ess"] >= t["min_bulk_ess"]:
        missed.append("ESS")
    if "process_cached_s" in t and r["run"] == "cached" and r["process_s"] > t["process_cached_s"]:
        missed.append("whole run")
    if "peak_mb" in t and not r.get("peak_mb", float("inf")) < t["peak_mb"]:
        missed.append("memory")
    return "yes" if not missed else "no: " + ", ".join(missed)


def render(meta: dict, rows: list[dict]) -> str:
    lines = [
        measured_on(meta) + f". Each model: `python fit.py --model NAME` on the {'bundled' if meta.get('trial', 'bundled') == 'bundled' else 'simulated'} trial, {meta['chains']} chains x "
        f"{meta['draws']} draws after {meta['tune']} tuning steps, seed {meta['seed']}, from empty caches and cached. "
        + (f"Trial: {meta['trial']} {meta['trial_size']}. " if meta.get("trial", "bundled") != "bundled" else "")
        + "Regenerate with `python benchmarks/bench_models.py` (docs/performance.md)."
        + (f" Updated: {meta['updated']}." if meta.get("updated") else ""),
        "",
        "Targets: " + ", ".join(TARGET_WORDS[k].format(v) for k, v in TRIAL_TARGETS[meta.get("trial", "bundled")].items()) + ".",
        "",
        "| model | run | log density | compile s | sampling s | model wall s | process s | divergences | min bulk ESS | min tail ESS | peak MB | peak MB by the end of sampling | targets met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['run']} | error: {r['error'][:200]} |")
            continue
        lines.append(
            f"| {r['model']} | {r['run']} | {r['log_density']} | {r['compile_s']} | {r['sample_s']} | {r['model_wall_s']} | {r['process_s']} | "
            f"{r['divergences']} | {r['min_bulk_ess']:.0f} | {r['min_tail_ess']:.0f} | {r.get('peak_mb', '-')} | {r.get('peak_sampling_mb', '-')} | {meets(r, meta.get('trial', 'bundled'))} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    from models import REGISTRY

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(REGISTRY), help="registered models (default: all)")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for models.json and models.md")
    ap.add_argument("--trial", choices=["bundled", *TRIALS], default="bundled",
                    help="the bundled trial (default) or a simulated one (TRIALS); results go to models_TRIAL.json/.md")
    ap.add_argument("--update", action="store_true", help="replace only these models' rows in the existing models.json (same settings)")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the saved .json of --trial (no fits)")
    args = ap.parse_args(argv)
    stem = "models" if args.trial == "bundled" else f"models_{args.trial}"
    if args.render:
        saved = json.loads((args.out / f"{stem}.json").read_text())
        (args.out / f"{stem}.md").write_text(render(saved["settings"], saved["runs"]) + "\n")
        return 0
    meta = {**machine_record(), "draws": args.draws, "tune": args.tune, "chains": args.chains, "seed": args.seed, "trial": args.trial}
    rows = []
    work = Path(tempfile.mkdtemp(prefix="deptrial-models-"))
    args.data = None
    try:
        if args.trial != "bundled":
            args.data = make_trial(args.trial, work)
            meta["trial_size"] = trial_size(args.trial)
        for name in args.models:
            caches = work / f"caches_{name}"
            env = {**os.environ, "DEPTRIAL_CACHE": str(caches / "deptrial"), "PYTENSOR_FLAGS": f"base_compiledir={caches / 'pytensor'}",
                   "PYTHONWARNINGS": "ignore"}
            for label in ("empty caches", "cached"):
                print(f"  {name} ({label}) ...", file=sys.stderr, flush=True)
                rows.append(run_model(name, work, label, env, args))
            shutil.rmtree(caches, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["load_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.update and (args.out / f"{stem}.json").exists():
        saved = json.loads((args.out / f"{stem}.json").read_text())
        same = {k: saved["settings"].get(k) for k in ("draws", "tune", "chains", "seed")} == {k: meta[k] for k in ("draws", "tune", "chains", "seed")}
        if not same:
            raise SystemExit("--update needs the settings of the saved models.json (draws, tune, chains, seed)")
        redone = {r["model"] for r in rows}
        rows = [r for r in saved["runs"] if r["model"] not in redone] + rows
        order = list(REGISTRY)
        rows.sort(key=lambda r: (order.index(r["model"]) if r["model"] in order else len(order), r["run"] != "empty caches"))
        meta["updated"] = f"{', '.join(sorted(redone))} measured {meta['date']}; the others {saved['settings']['date']}"
        meta["date"], meta["load_start"] = saved["settings"]["date"], saved["settings"]["load_start"]
    (args.out / f"{stem}.json").write_text(json.dumps({"settings": meta, "runs": rows}, indent=2) + "\n")
    text = render(meta, rows)
    (args.out / f"{stem}.md").write_text(text + "\n")
    print(text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
