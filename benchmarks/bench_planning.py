#!/usr/bin/env python
"""Benchmark: simulated and analysed trials per second of plan.py, in one process and on a local Dask cluster.

    python benchmarks/bench_planning.py                                    # posterior of results/mmrm if present
    python benchmarks/bench_planning.py --posterior results/mmrm/idata.nc --workers 1 2 --sims 1000 --json /tmp/plan_bench.json

The design: 100 participants per arm (1:1), visits at weeks 0, 2, 4, 6, 8, 12, 16 (7 visits), primary week
12, MAR dropout (the fitted trial's rates by visit and arm; 0.25 by week 12 from a design prior), every
simulated trial drawn in full and analysed by the closed-form MMRM (REML) with plan.py's scenarios
(assurance, the robust prior's vague component, type I error at 0, power at -2 and -3). Reports, per
worker count, the wall time (posterior loading excluded) and simulated-and-analysed trials per second,
for more than one worker both with the start-up of the local cluster (N single-threaded processes) and
on the running cluster, and checks the tables are identical whatever the worker count. `--analysis ancova` times the completers' ANCOVA instead.
`--interim 0.5 --alpha 0.025` times the same grid with an interim look (every trial analysed at the look and at the end,
with the predictive probability of success) after calibrating the thresholds on --calibration-sims null trials (timed
apart). The trial has the posterior's arms (the bundled dose trial's fit: three, `--allocation 1:1:1`; every arm
analysed against control in one MMRM). Writes JSON to --json if given, with the date and the machine's load.

    python benchmarks/bench_planning.py --posterior results/mmrm/idata.nc --interim 0.5 --alpha 0.025 --json benchmarks/results/planning_interim.json
    python benchmarks/bench_planning.py --posterior results/dose/mmrm/idata.nc --allocation 1:1:1 --workers 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WEEKS = ("0", "2", "4", "6", "8", "12", "16")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posterior", type=Path, default=Path("results/mmrm/idata.nc"))
    ap.add_argument("--sims", type=int, default=1000, help="simulated trials per scenario")
    ap.add_argument("--n-per-arm", type=int, default=100)
    ap.add_argument("--allocation", default="1", help="allocation over the arms, control first (plan.py --allocation)")
    ap.add_argument("--analysis", choices=("mmrm", "ancova"), default="mmrm")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--interim", type=float, nargs="+", default=None, metavar="FRACTION", help="interim looks (plan.py --interim)")
    ap.add_argument("--alpha", type=float, default=None, help="calibrate the thresholds to this type I error (plan.py --alpha)")
    ap.add_argument("--calibration-sims", type=int, default=5000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import pandas as pd

    import plan
    from planning import plan as run_plan

    if args.posterior.is_file():
        source = ["--posterior", str(args.posterior)]
    else:
        source = ["--design-prior", "Normal(-1.5, 1)", "--dropout", "0.25"]
    t0 = time.perf_counter()
    params, spec = plan.build(plan.parse_args([
        *source, "--sims", str(args.sims), "--seed", str(args.seed), "--n-per-arm", str(args.n_per_arm), "--weeks", *WEEKS,
        "--primary-week", "12", "--analysis", args.analysis, "--dropout-mechanism", "mar", "--allocation", args.allocation,
        *(["--interim", *map(str, args.interim)] if args.interim else []),
        *(["--alpha", str(args.alpha), "--calibration-sims", str(args.calibration_sims)] if args.alpha is not None else []),
    ]))
    load_s = time.perf_counter() - t0
    d0 = spec.designs[0]
    out = {
        "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_before": os.getloadavg()},
        "parameters": params.source.get("path", params.source.get("kind")),
        "family": params.family,
        "draws": params.n_draws,
        "analysis": spec.analysis.method,
        "n_per_arm": d0.n_control,
        "arms": list(d0.arms),
        "allocation": d0.allocation_text(),
        "visits": len(d0.weeks),
        "dropout": {"mechanism": d0.dropout_mechanism, "by_arm": dict(zip(d0.arms, d0.dropout_rates)), "source": d0.dropout_source},
        "designs": len(spec.designs),
        "scenarios": [sc.label for sc in spec.scenarios],
        "interim": None if spec.interim is None else {"fractions": list(spec.interim.fractions), "futility": spec.interim.futility, "efficacy": spec.interim.efficacy},
        "calibration": None if spec.calibration is None else {"alpha": spec.calibration.alpha, "mode": spec.calibration.mode, "null_trials": spec.calibration.sims},
        "sims_per_cell": spec.sims,
        "load_s": round(load_s, 2),
        "runs": [],
    }
    tables = []
    for workers in args.workers:
        if workers <= 1:
            table, timings = run_plan(params, spec, workers=1)
            run = {"workers": 1, "wall_s": round(timings["wall_s"], 2), "trials": timings["trials"], "trials_per_s": round(timings["trials_per_s"], 1)}
        else:
            from dask.distributed import Client

            from planning.runner import local_cluster

            t0 = time.perf_counter()
            with local_cluster(workers) as cluster, Client(cluster) as client:
                client.wait_for_workers(workers)
                startup = time.perf_counter() - t0
                table, timings = run_plan(params, spec, client=client)
            total = startup + timings["wall_s"]
            run = {"workers": workers, "startup_s": round(startup, 2), "wall_s": round(timings["wall_s"], 2), "trials": timings["trials"],
                   "trials_per_s": round(timings["trials_per_s"], 1), "wall_with_startup_s": round(total, 2),
                   "trials_per_s_with_startup": round(timings["trials"] / total, 1)}
        if "calibration_s" in timings:  # null trials simulated and analysed at every look, before the grid
            null_trials = spec.calibration.sims * len(spec.designs)
            run.update(calibration_s=round(timings["calibration_s"], 2), calibration_trials_per_s=round(null_trials / timings["calibration_s"], 1))
        tables.append(table)
        run["load_avg_after"] = os.getloadavg()
        out["runs"].append(run)
        extra = f" ({run['trials_per_s_with_startup']:.0f}/s with the cluster's {run['startup_s']} s start-up)" if "startup_s" in run else ""
        print(f"workers {workers}: {run['trials']} trials in {run['wall_s']} s = {run['trials_per_s']:.0f} trials/s{extra}", flush=True)
    for other in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], other, check_exact=True)
    out["identical_tables"] = True
    out["failed_analyses"] = int(tables[0]["failed_analyses"].sum())
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
