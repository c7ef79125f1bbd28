#!/usr/bin/env python
"""Benchmark: simulated trials per second of plan.py's default design grid.

    python benchmarks/bench_planning.py                                    # posterior of results/headline if present
    python benchmarks/bench_planning.py --posterior results/headline/idata.nc --workers 1 2 --sims 1000

The default design is plan.py's: 7 placebo-arm sizes (40-200 per arm, 1:1), primary week 12, the
fitted trial's dropout, four scenarios (assurance, type I error at 0, power at -2 and -3), each
simulated trial analysed by the fast ANCOVA posterior. Reports, per worker count, the wall time of
the simulation (cluster start-up included, posterior loading excluded) and trials per second, and
checks the tables are identical whatever the worker count. Writes JSON to --json if given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posterior", type=Path, default=Path("results/headline/idata.nc"))
    ap.add_argument("--sims", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import pandas as pd

    import plan
    from planning import plan as run_plan

    source = ["--posterior", str(args.posterior)] if args.posterior.is_file() else ["--design-prior", "Normal(-1.5, 1)"]
    t0 = time.perf_counter()
    params, spec = plan.build(plan.parse_args([*source, "--sims", str(args.sims), "--seed", str(args.seed)]))
    load_s = time.perf_counter() - t0
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "parameters": params.source.get("path", params.source.get("kind")),
        "draws": params.n_draws,
        "designs": len(spec.designs),
        "scenarios": len(spec.scenarios),
        "sims_per_cell": spec.sims,
        "load_s": round(load_s, 2),
        "runs": [],
    }
    tables = []
    for workers in args.workers:
        table, timings = run_plan(params, spec, workers=workers)
        tables.append(table)
        run = {"workers": workers, "wall_s": round(timings["wall_s"], 2), "trials": timings["trials"], "trials_per_s": round(timings["trials_per_s"], 1)}
        out["runs"].append(run)
        print(f"workers {workers}: {run['trials']} trials in {run['wall_s']} s = {run['trials_per_s']:.0f} trials/s", flush=True)
    for other in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], other, check_exact=True)
    out["identical_tables"] = True
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
