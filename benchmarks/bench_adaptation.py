#!/usr/bin/env python
"""nutpie's two mass-matrix adaptations side by side: low-rank modified (the default) and diagonal.

    python benchmarks/bench_adaptation.py                               # bundled trial: mmrm, null, treatment, headline
    python benchmarks/bench_adaptation.py --trial bcva --models mmrm    # also a simulated trial (benchmarks/bench_models.TRIALS)

Each model is compiled once (the compiled-model cache) and sampled twice in this process with the same
seed, chains, draws and tuning steps (inference.sampling.nutpie_adaptation("low_rank") and ("diag")), as
`fit.py` samples it. Reported per run: sampling seconds, the smallest bulk and tail ESS over the
population parameters (the ones the convergence verdict judges), the mean number of leapfrog steps per
draw, divergences, and ESS per second of sampling. Results go to
benchmarks/results/sampler_adaptation.{json,md}; rows of other trials are kept (one file for every trial).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from inference.idata_io import load_average, machine_record, measured_on  # noqa: E402

STEM = "sampler_adaptation"


def run(trial: str, models: list[str], draws: int, tune: int, chains: int, seed: int, work: Path, measured: str) -> list[dict]:
    import arviz as az
    import numpy as np
    import nutpie

    from data import DEFAULT_DATASET, load_dataset
    from diagnostics.convergence import judged_posterior
    from inference.compile import compile_nutpie
    from inference.sampling import nutpie_adaptation, seed_streams
    from models import build_design, get

    if trial == "bundled":
        folder = DEFAULT_DATASET
    else:
        from bench_models import make_trial

        folder = make_trial(trial, work)
    design = build_design(load_dataset(folder))
    rows = []
    for name in models:
        built = get(name).build(design)
        target = built.fast_variant() if built.fast_variant is not None else built
        compiled, _ = compile_nutpie(target, fused=True)
        for mass_matrix in ("low_rank", "diag"):
            t0 = time.perf_counter()
            idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=2, seed=seed_streams(seed)[1],
                                  target_accept=0.9, progress_bar=False, save_warmup=False, **nutpie_adaptation(mass_matrix))
            sample_s = time.perf_counter() - t0
            judged = judged_posterior(idata, design)[0]  # the marginal model's draws: its population parameters
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bulk = az.ess(judged, method="bulk")
                tail = az.ess(judged, method="tail")
            finite = lambda ds: [float(np.nanmin(ds[v].values)) for v in ds.data_vars if np.isfinite(ds[v].values).any()]  # noqa: E731
            min_bulk, min_tail = min(finite(bulk)), min(finite(tail))
            stats = idata.sample_stats
            rows.append({
                "trial": trial, "model": name, "mass_matrix": mass_matrix, "chains": chains, "draws": draws, "tune": tune,
                "sample_s": round(sample_s, 2), "min_bulk_ess": round(min_bulk), "min_tail_ess": round(min_tail),
                "mean_steps": round(float(stats["n_steps"].mean()), 1), "divergences": int(stats["diverging"].sum()),
                "bulk_ess_per_s": round(min_bulk / sample_s, 1), "measured": measured,
            })
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def render(meta: dict, rows: list[dict]) -> str:
    lines = [
        measured_on(meta) + " (the latest run; each row states when it was measured and the load then). Each model compiled once and sampled by nutpie with each mass-matrix adaptation, "
        "same seed, chains, draws and tuning steps (as each row states); ESS is the smallest over the population "
        "parameters. Regenerate with `python benchmarks/bench_adaptation.py` (docs/performance.md).",
        "",
        "| trial | model | mass matrix | chains | draws | tune | sampling s | min bulk ESS | min tail ESS | bulk ESS/s | leapfrog steps per draw | divergences | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['trial']} | {r['model']} | {r['mass_matrix']} | {r['chains']} | {r['draws']} | {r['tune']} | {r['sample_s']} | "
                     f"{r['min_bulk_ess']} | {r['min_tail_ess']} | {r['bulk_ess_per_s']} | {r['mean_steps']} | {r['divergences']} | {r.get('measured', '-')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trial", default="bundled", help="bundled (default) or a trial of benchmarks/bench_models.TRIALS")
    ap.add_argument("--models", nargs="+", default=["mmrm", "null", "treatment", "headline"])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    meta = machine_record()
    with tempfile.TemporaryDirectory(prefix="deptrial-adaptation-") as work:
        measured = f"{meta['date'][:16]} (load {meta['load_start'][0]:.2f})"
        rows = run(args.trial, args.models, args.draws, args.tune, args.chains, args.seed, Path(work), measured)
    meta["load_end"] = load_average()
    path = args.out / f"{STEM}.json"
    kept = [r for r in json.loads(path.read_text())["results"] if r["trial"] != args.trial] if path.exists() else []
    results = kept + rows
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": meta, "results": results}, indent=2) + "\n")
    (args.out / f"{STEM}.md").write_text(render(meta, results) + "\n")
    print(render(meta, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
