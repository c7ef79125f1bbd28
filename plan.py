#!/usr/bin/env python
"""Plan the next trial: simulate future trials from a saved posterior (or a design prior) and report
assurance, power, type I error and posterior interval width per design, with Monte Carlo SEs.

    python plan.py --posterior results/headline/idata.nc                     # the default grid
    python plan.py --posterior results/headline/idata.nc --n-per-arm 60 100 150 \\
                   --enrich crp:3 --dual --target-assurance 0.8 --out results/plan
    python plan.py --design-prior "Normal(-2, 1)" --sims 2000                  # no fit needed
    python plan.py --posterior ... --scheduler tcp://10.0.0.5:8786             # on a Dask cluster

Exit codes: 0 success; 2 bad input or arguments (nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

DEFAULT_GRID = (40, 60, 80, 100, 130, 160, 200)
DEFAULT_EFFECTS = (-2.0, -3.0)
AUTO_PARALLEL_WORK = 4e7  # simulated participants: ~20 s on one core, where 2 processes start paying off


def _allocation(text: str) -> float:
    try:
        if ":" in text:
            a, b = text.split(":")
            value = float(a) / float(b)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"allocation '{text}' not understood; write NAC:placebo, e.g. 1:1 or 2:1") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"allocation '{text}' must be positive")
    return value


def _enrich(text: str) -> tuple[str, float]:
    marker, _, value = text.partition(":")
    try:
        threshold = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--enrich '{text}' not understood; write MARKER:THRESHOLD in natural units, e.g. crp:3") from None
    if not marker or not threshold > 0:
        raise argparse.ArgumentTypeError(f"--enrich '{text}': need a marker name and a positive threshold, e.g. crp:3")
    return marker, threshold


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="plan.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("where the parameters come from (at least one)")
    src.add_argument("--posterior", type=Path, help="a saved fit (idata.nc of the headline model, written by fit.py)")
    src.add_argument("--design-prior", metavar="'Normal(M, SD)'", help="design prior on the NAC - placebo effect at the primary week (outcome points); "
                     "with --posterior it replaces the posterior's effect, alone the other parameters take the published-trial calibration")
    src.add_argument("--max-draws", type=int, default=None, help="use a random subset of this many posterior draws")
    des = ap.add_argument_group("designs")
    des.add_argument("--n-per-arm", type=int, nargs="+", default=list(DEFAULT_GRID), metavar="N", help="placebo-arm sizes to simulate (the grid)")
    des.add_argument("--allocation", type=_allocation, default=1.0, metavar="NAC:PLACEBO", help="allocation ratio, e.g. 1:1 (default) or 2:1")
    des.add_argument("--weeks", type=int, nargs="+", default=None, help="visit schedule (default: the fitted trial's, up to the primary week)")
    des.add_argument("--primary-week", type=float, default=None, help="week of the primary comparison (default: the fitted end of treatment)")
    des.add_argument("--dropout", type=float, default=None, help="fraction lost by the primary week, completely at random (default: the fitted trial's, else 0.2)")
    des.add_argument("--effect-scale", type=float, default=1.0, help="multiply the NAC effect of every draw (e.g. 0.5 for a more sceptical plan)")
    des.add_argument("--enrich", type=_enrich, action="append", default=[], metavar="MARKER:THRESHOLD",
                     help="also plan an enriched trial enrolling only people whose baseline marker exceeds THRESHOLD (natural units); repeatable")
    dec = ap.add_argument_group("analysis and decision rule")
    dec.add_argument("--threshold", type=float, default=0.975, help="success if P(effect < 0) > threshold")
    dec.add_argument("--mcid", type=float, default=2.0, help="minimal clinically important difference (outcome points)")
    dec.add_argument("--dual", action="store_true", help="dual criterion: also require P(effect < -MCID) > --mcid-prob")
    dec.add_argument("--mcid-prob", type=float, default=0.5)
    dec.add_argument("--prior-sd", type=float, default=None, help="SD of the analysis' Normal(0, SD) prior on the effect (default 0.1 x outcome range: 6 MADRS points)")
    dec.add_argument("--effects", type=float, nargs="*", default=list(DEFAULT_EFFECTS), help="fixed effects for power (type I error at 0 is always added)")
    dec.add_argument("--target-assurance", type=float, default=0.8)
    run = ap.add_argument_group("running")
    run.add_argument("--sims", type=int, default=1000, help="simulated trials per design and scenario")
    run.add_argument("--chunk-size", type=int, default=250, help="simulated trials per task (fixed: results do not depend on workers)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--workers", type=int, default=None,
                     help="local worker processes (a Dask LocalCluster); 1 = run in this process; default: one per core when the run is "
                     f"big enough to repay the cluster's start-up (over {AUTO_PARALLEL_WORK:.0e} simulated participants), else 1")
    run.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run on the Dask cluster at this scheduler address instead")
    run.add_argument("--mcmc-check", type=int, default=0, metavar="K", help="also analyse K simulated trials by MCMC and report the decision agreement")
    run.add_argument("--out", type=Path, default=Path("results/plan"), help="output folder")
    run.add_argument("--force", action="store_true", help="replace an existing output folder")
    run.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.posterior is None and args.design_prior is None:
        ap.error("give --posterior (a saved fit, e.g. results/headline/idata.nc from `python fit.py`) or --design-prior 'Normal(M, SD)'")
    if any(n < 2 for n in args.n_per_arm):
        ap.error("--n-per-arm values must be at least 2")
    for name in ("sims", "chunk_size", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_draws is not None and args.max_draws < 1:
        ap.error("--max-draws must be at least 1")
    if not 0 < args.target_assurance < 1:
        ap.error("--target-assurance must be in (0, 1)")
    if args.mcmc_check < 0:
        ap.error("--mcmc-check must be >= 0")
    return args


def build(args):
    """ParameterSet and PlanSpec from the arguments (raises PlanningError on bad input)."""
    from planning import AnalysisSettings, PlannedTrial, PlanSpec, Scenario, fixed_parameters, from_posterior, parse_design_prior

    if args.posterior is not None:
        params = from_posterior(args.posterior, max_draws=args.max_draws, seed=args.seed)
    else:
        params = fixed_parameters()
    if args.design_prior is not None:
        params = params.with_effect_prior(*parse_design_prior(args.design_prior))
    scale = params.scale
    primary = float(args.primary_week) if args.primary_week is not None else float(scale.treatment_end)
    weeks = tuple(args.weeks) if args.weeks else tuple(w for w in scale.weeks if w <= primary)
    dropout = args.dropout
    if dropout is None:
        observed = params.source.get("dropout_by_week", {})
        key = str(int(primary)) if str(int(primary)) in observed else int(primary)
        dropout = round(float(observed[key]), 3) if key in observed else 0.2
    pops = [(None, None)] + list(args.enrich)
    designs = [
        PlannedTrial(n, allocation=args.allocation, primary_week=primary, weeks=weeks, dropout=dropout, enrich_marker=m, enrich_threshold=t)
        for m, t in pops
        for n in sorted(set(args.n_per_arm))
    ]
    effects = [0.0] + [e for e in dict.fromkeys(args.effects) if e != 0.0]
    scenarios = [Scenario("assurance")] + [Scenario("fixed", e) for e in effects]
    analysis = AnalysisSettings(
        threshold=args.threshold,
        mcid=args.mcid,
        dual=args.dual,
        mcid_prob=args.mcid_prob,
        prior_sd=args.prior_sd if args.prior_sd is not None else 0.1 * scale.score_range,
    )
    spec = PlanSpec(designs, scenarios, analysis, sims=args.sims, seed=args.seed, chunk_size=args.chunk_size, effect_scale=args.effect_scale)
    spec.validate(params)
    return params, spec


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    from data.atomic import OutputBusy, locked_output
    from planning import PlanningError, plan, smallest_n
    from planning.report import plot_plan

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if args.out.exists() and not args.force:
        return fail(f"output folder {args.out} already exists; choose another --out or pass --force to replace it")
    t_start = time.perf_counter()
    try:
        params, spec = build(args)
    except PlanningError as exc:
        return fail(str(exc))
    if args.workers is None:
        import os

        work = spec.sims * len(spec.scenarios) * sum(d.n_total for d in spec.designs)
        args.workers = (os.cpu_count() or 1) if work > AUTO_PARALLEL_WORK else 1
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    d0 = spec.designs[0]
    log(
        f"planning: {params.n_draws} parameter draws ({params.source.get('kind')}{', effect ' + params.source['effect_prior'] if 'effect_prior' in params.source else ''}); "
        f"{len(spec.designs)} designs x {len(spec.scenarios)} scenarios x {spec.sims} trials; primary week {d0.primary_week:g}, "
        f"dropout {d0.dropout:g}, allocation {d0.allocation:g}:1, "
        + ("local process" if args.workers <= 1 and not args.scheduler else f"Dask {'scheduler ' + args.scheduler if args.scheduler else f'LocalCluster, {args.workers} workers'}")
    )
    try:
        table, timings = plan(params, spec, workers=args.workers, scheduler=args.scheduler)
    except PlanningError as exc:
        return fail(str(exc))
    best = smallest_n(table, args.target_assurance)
    agreement = None
    if args.mcmc_check:
        from planning.mcmc_check import mcmc_agreement

        mid = spec.designs[len([d for d in spec.designs if d.enrich_marker is None]) // 2]
        log(f"MCMC check: {args.mcmc_check} simulated trials at {mid.n_control} per arm")
        agree_table, agreement = mcmc_agreement(params, mid, spec.analysis, n_trials=args.mcmc_check, seed=args.seed)
    record = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "parameters": params.to_dict(),
        "analysis": spec.analysis.to_dict(),
        "designs": {"primary_week": d0.primary_week, "weeks": list(d0.weeks), "dropout": d0.dropout, "allocation": d0.allocation},
        "smallest_n": best.to_dict(orient="records"),
        "timings": timings,
        "mcmc_agreement": agreement,
    }
    try:
        with locked_output(args.out, overwrite=args.force) as tmp:
            table.to_csv(tmp / "plan.csv", index=False, float_format="%.6g")
            best.to_csv(tmp / "smallest_n.csv", index=False)
            plot_plan(table, tmp / "plan.png", args.target_assurance, title=f"{params.scale.outcome_label}: success if P(effect<0) > {spec.analysis.threshold:g}"
                      + (f" and P(effect<-{spec.analysis.mcid:g}) > {spec.analysis.mcid_prob:g}" if spec.analysis.dual else ""))
            if agreement is not None:
                agree_table.to_csv(tmp / "mcmc_agreement.csv", index=False, float_format="%.6g")
            record["timings"]["total_s"] = time.perf_counter() - t_start
            (tmp / "plan.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    except (FileExistsError, OutputBusy) as exc:
        return fail(str(exc))
    if not args.quiet:
        print(format_table(table))
        for row in best.itertuples():
            reached = f"n per arm {row.n_per_arm:g} (conservative, assurance - 2 MCSE: {row.n_per_arm_conservative:g})" if row.n_per_arm == row.n_per_arm else "not reached on this grid"
            print(f"target assurance {row.target_assurance:g}, population {row.population}: {reached}; max assurance {row.max_assurance:.3f} at n per arm {row.at_n_per_arm:g}")
        if agreement is not None:
            print(f"fast analysis vs MCMC: decisions agree in {agreement['agreement_rate']:.1%} of {agreement['trials']} trials")
        print(f"{timings['trials']} simulated trials in {timings['wall_s']:.1f} s ({timings['trials_per_s']:.0f} per second)")
        print(f"\nwrote {args.out}/")
    return 0


def format_table(table) -> str:
    wide = table.pivot_table(index=["population", "n_per_arm"], columns="scenario", values="p_success", sort=False)
    mcse = table.pivot_table(index=["population", "n_per_arm"], columns="scenario", values="p_success_mcse", sort=False)
    width = table[table["scenario"] == "assurance"].set_index(["population", "n_per_arm"])["interval_width"]
    out = wide.copy().astype(object)
    for col in wide.columns:
        out[col] = [f"{p:.3f} ({m:.3f})" for p, m in zip(wide[col], mcse[col])]
    out["95% width"] = width.round(2)
    return "P(success) (MCSE)\n" + out.to_string()


if __name__ == "__main__":
    raise SystemExit(main())
