#!/usr/bin/env python
"""Plan the next trial: simulate future trials from a saved posterior (or a design prior) and report
assurance, power, type I error and posterior interval width per design and active arm, with Monte Carlo
SEs. The trial has the fitted trial's arms (any number): every active arm is compared with the control
arm, and a design with several active arms is also judged by "at least one arm succeeds" (arm "any").

    python plan.py --posterior results/headline/idata.nc                     # the default grid
    python plan.py --posterior results/mmrm/idata.nc --analysis mmrm --dropout-mechanism mnar --dropout 0.3,0.2
    python plan.py --posterior results/headline/idata.nc --n-per-arm 60 100 150 \\
                   --enrich crp:3 --dual --target-assurance 0.8 --out results/plan
    python plan.py --posterior results/mmrm/idata.nc --interim 0.5 --alpha 0.025  # interim look, calibrated thresholds
    python plan.py --posterior dosefit/mmrm/idata.nc --allocation 1:1:1 --alpha 0.025 --interim 0.5  # a three-arm trial
    python plan.py --design-prior "Normal(-2, 1)" --sims 2000                  # no fit needed
    python plan.py --design-prior "low=Normal(-1.5, 1)" "high=Normal(-3, 1)"  # a design prior per active arm
    python plan.py --design-prior "Normal(-2, 1)" --historical-control data/historical_example.csv --allocation 2:1  # borrow a control arm
    python plan.py --posterior ... --scheduler tcp://10.0.0.5:8786             # on a Dask cluster

Exit codes: 0 success; 2 bad input or arguments (nothing written).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

DEFAULT_GRID = (40, 60, 80, 100, 130, 160, 200)
DEFAULT_EFFECTS = (-2.0, -3.0)
AUTO_PARALLEL_WORK = 4e7  # simulated participants: ~20 s on one core, where 2 processes start paying off


def parse_allocation(text: str, arms: tuple[str, ...]) -> float | tuple[float, ...]:
    """--allocation over the arms: 'R1:...:R0' with one part per arm, the active arms in the trial's order and the
    control arm LAST (as "drug:placebo 2:1" is said: 2:1 puts two participants on the active arm per control
    participant), 'ARM=R,ARM=R,...' naming every arm once, or one number (participants of each active arm per control
    participant). Returns the ratio of each active arm to control (one number for a single number)."""
    from planning import PlanningError

    ordered = (*arms[1:], arms[0])  # the active arms, then the control arm
    order = ":".join(ordered)
    how = (f"write one part per arm in the order {order} (e.g. {':'.join('1' for _ in arms)}), name each arm "
           f"({','.join(f'{a}=1' for a in arms)}), or give one number (each active arm per {arms[0]} participant)")
    try:
        if "=" in text:
            named = {}
            for item in text.split(","):
                arm, _, value = item.partition("=")
                if arm.strip() in named:
                    raise PlanningError(f"--allocation '{text}' names arm '{arm.strip()}' twice; {how}")
                named[arm.strip()] = float(value)
            if set(named) != set(arms):
                unknown, missing = sorted(set(named) - set(arms)), [a for a in arms if a not in named]
                raise PlanningError(f"--allocation '{text}' must name each arm of {list(arms)} once"
                                    + (f"; unknown {unknown}" if unknown else "") + (f"; missing {missing}" if missing else ""))
            parts = [named[a] for a in arms]
        elif ":" in text:
            given = [float(x) for x in text.split(":")]
            if len(given) != len(arms):
                raise PlanningError(f"--allocation '{text}' has {len(given)} parts for the {len(arms)} arms {order}; {how}")
            parts = [given[-1], *given[:-1]]  # control first, as the named form
        else:
            value = float(text)
            if not (value > 0 and math.isfinite(value)):
                raise PlanningError(f"--allocation '{text}' must be positive; {how}")
            return value
    except ValueError as exc:
        if isinstance(exc, PlanningError):
            raise
        raise PlanningError(f"--allocation '{text}' not understood; {how}") from None
    if not all(x > 0 and math.isfinite(x) for x in parts):
        raise PlanningError(f"--allocation '{text}': every part must be positive; {how}")
    return tuple(x / parts[0] for x in parts[1:])


def _enrich(text: str) -> tuple[str, float]:
    marker, _, value = text.partition(":")
    try:
        threshold = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--enrich '{text}' not understood; write MARKER:THRESHOLD in natural units, e.g. crp:3") from None
    if not marker or not threshold > 0:
        raise argparse.ArgumentTypeError(f"--enrich '{text}': need a marker name and a positive threshold, e.g. crp:3")
    return marker, threshold


def _dropout(text: str) -> tuple[float, ...]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dropout '{text}' not understood; write one fraction (0.25) or one per arm, control first (0.2,0.3)") from None
    if not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--dropout '{text}': fractions in [0, 1), one for every arm or one per arm, control first")
    return tuple(values)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="plan.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("where the parameters come from (at least one)")
    src.add_argument("--posterior", type=Path, help="a saved fit (idata.nc of the headline model, written by fit.py)")
    src.add_argument("--design-prior", nargs="+", metavar="'[ARM=]Normal(M, SD)'",
                     help="design prior on each active arm's difference from control at the primary week (outcome points; negative = the arm better): "
                     "one Normal(M, SD) for every active arm, or ARM=Normal(M, SD) for each (drawn independently per arm); with --posterior it "
                     "replaces the posterior's effects, alone the other parameters take the published-trial calibration (control arm 'placebo'; "
                     "one unnamed prior: the active arm 'nac', named priors: one active arm per name)")
    src.add_argument("--max-draws", type=int, default=None, help="use a random subset of this many posterior draws")
    des = ap.add_argument_group("designs")
    des.add_argument("--n-per-arm", type=int, nargs="+", default=list(DEFAULT_GRID), metavar="N", help="control-arm sizes to simulate (the grid)")
    des.add_argument("--allocation", default="1", metavar="RATIO",
                     help="allocation over all arms, the active arms in the fitted trial's order and the control arm last (e.g. 1:1:1 for "
                     "low:high:placebo, 2:1 for two participants on the active arm per control participant), or named (placebo=1,low=2,high=2), "
                     "or one number: participants of each active arm per control participant (default 1)")
    des.add_argument("--weeks", type=int, nargs="+", default=None, help="visit schedule (default: the fitted trial's, up to the primary week)")
    des.add_argument("--primary-week", type=float, default=None, help="week of the primary comparison (default: the fitted end of treatment)")
    des.add_argument("--dropout", type=_dropout, default=None, metavar="FRACTION[,FRACTION...]",
                     help="fraction lost by the primary week, one for every arm or one per arm, control first (default: the fitted trial's, by visit and arm; else 0.2)")
    des.add_argument("--dropout-mechanism", choices=("mcar", "mar", "mnar"), default="mar",
                     help="mcar: completely at random; mar: leaving depends on the last attended score; mnar: on the missed visit's score (default mar)")
    des.add_argument("--dropout-score-effect", type=float, default=0.3,
                     help="log-odds of leaving per 5 points of the score it depends on (mar, mnar; default 0.3, as the synthetic trial)")
    des.add_argument("--entry-min", type=float, default=None,
                     help="enrol only people whose baseline score is at least this (default: the dataset's entry criterion if it records one, else none)")
    des.add_argument("--sites", type=int, default=None,
                     help="new sites per trial, each arm spread evenly over them (default: the fitted trial's number of sites; 1 with --design-prior alone)")
    des.add_argument("--site-sd", type=float, default=None,
                     help="SD of the new sites' offsets (default: each posterior draw's spread of the fitted site offsets; 1.5 points with --design-prior alone)")
    des.add_argument("--effect-scale", type=float, default=1.0, help="multiply every active arm's effect in every draw (e.g. 0.5 for a more sceptical plan)")
    des.add_argument("--enrich", type=_enrich, action="append", default=[], metavar="MARKER:THRESHOLD",
                     help="also plan an enriched trial enrolling only people whose baseline marker exceeds THRESHOLD (natural units); repeatable")
    dec = ap.add_argument_group("analysis and decision rule")
    dec.add_argument("--threshold", type=float, default=0.975, help="an active arm succeeds if P(its effect vs control < 0) > threshold")
    dec.add_argument("--mcid", type=float, default=2.0, help="minimal clinically important difference (outcome points)")
    dec.add_argument("--dual", action="store_true", help="dual criterion: also require P(effect < -MCID) > --mcid-prob")
    dec.add_argument("--mcid-prob", type=float, default=0.5)
    dec.add_argument("--prior-sd", type=float, default=None, help="SD of the analysis' Normal(0, SD) prior on the effect (default 0.1 x outcome range: 6 MADRS points)")
    dec.add_argument("--analysis", choices=("mmrm", "ancova"), default="mmrm",
                     help="analysis of each simulated trial: mmrm (all attended visits, REML, valid under MAR; default) or ancova (completers at the primary week)")
    dec.add_argument("--effects", type=float, nargs="*", default=list(DEFAULT_EFFECTS),
                     help="fixed effects for power, each for every active arm (type I error at 0, the global null, is always added)")
    dec.add_argument("--robust-weight", type=float, default=0.2,
                     help="weight of the vague component of the robust design prior (0: plain assurance only; default 0.2)")
    dec.add_argument("--robust-sd", type=float, default=None,
                     help="SD of the vague component Normal(0, SD) (default: the unit-information SD, one participant's change from baseline at the primary week)")
    dec.add_argument("--target-assurance", type=float, default=0.8)
    hc = ap.add_argument_group("borrowing a control arm from past trials (docs/planning.md)")
    hc.add_argument("--historical-control", type=Path, default=None, metavar="CSV",
                    help="historical control arms (columns study, n, mean, sd: each past trial's control arm's mean change from baseline at the "
                    "primary visit); the analysis puts their robust meta-analytic-predictive (MAP) prior on the control arm's mean change at the "
                    "primary visit, and the plan adds type I error and power against drift, with and without borrowing")
    hc.add_argument("--map-robust-weight", type=float, default=0.2,
                    help="weight of the MAP prior's vague component, Normal(MAP mean, unit SD^2) (0: the MAP mixture alone; default 0.2)")
    hc.add_argument("--map-tau-scale", type=float, default=None,
                    help="scale of the HalfNormal prior on the between-trial SD tau (default: sigma / 2, sigma the historical trials' pooled SD)")
    hc.add_argument("--drift", type=float, nargs="+", default=None, metavar="D",
                    help="drifts to simulate: the new trial's true control mean change at the primary visit minus the MAP mean, in outcome points "
                    "(default: 7 values from -2 to +2 MAP SDs; 0 is always added)")
    itm = ap.add_argument_group("interim looks")
    looks = itm.add_mutually_exclusive_group()
    looks.add_argument("--interim", type=float, nargs="+", default=None, metavar="FRACTION",
                       help="interim looks when these fractions of participants have reached the primary visit, e.g. 0.5 0.75 (default: none)")
    looks.add_argument("--interim-weeks", type=float, nargs="+", default=None, metavar="WEEK",
                       help="or interim looks at these calendar weeks after the first participant's entry, e.g. 20 30")
    itm.add_argument("--futility", type=float, default=0.1,
                     help="drop an active arm for futility if its predictive probability of final success is below this; the others continue (default 0.1)")
    itm.add_argument("--efficacy", type=float, default=0.995,
                     help="stop an active arm for efficacy if its interim P(effect < 0) is above this (default 0.995)")
    itm.add_argument("--accrual-per-week", type=float, default=None,
                     help="participants enrolled per week, uniformly (default: n_total / primary week, so enrolment takes as long as the treatment period)")
    cal = ap.add_argument_group("type I error calibration")
    cal.add_argument("--alpha", type=float, default=None,
                     help="calibrate each design's thresholds, one for every active arm, so its family-wise type I error (some arm succeeding when "
                     "no arm differs from control; futility non-binding) is at most this, e.g. 0.025 (default: no calibration)")
    cal.add_argument("--calibrate", choices=("final", "common"), default="final",
                     help="final: calibrate --threshold, keeping --efficacy (default); common: one threshold at every look and the final analysis")
    cal.add_argument("--calibration-sims", type=int, default=5000, help="global-null trials per design for the calibration (default 5000)")
    run = ap.add_argument_group("running")
    run.add_argument("--sims", type=int, default=1000, help="simulated trials per design and scenario")
    run.add_argument("--chunk-size", type=int, default=250, help="simulated trials per task (fixed: results do not depend on workers)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--workers", type=int, default=None,
                     help="local worker processes (a Dask LocalCluster); 1 = run in this process; default: one per core when the run is "
                     f"big enough to repay the cluster's start-up (over {AUTO_PARALLEL_WORK:.0e} simulated participants), else 1")
    run.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run on the Dask cluster at this scheduler address instead")
    run.add_argument("--mcmc-check", type=int, default=0, metavar="K", help="also analyse K simulated trials by MCMC and report the decision agreement (every arm)")
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
    if not 0 <= args.robust_weight < 1:
        ap.error("--robust-weight must be in [0, 1)")
    if args.robust_sd is not None and not args.robust_sd > 0:
        ap.error("--robust-sd must be positive")
    if args.sites is not None and args.sites < 1:
        ap.error("--sites must be at least 1")
    if args.calibration_sims < 1:
        ap.error("--calibration-sims must be at least 1")
    if args.historical_control is None:
        given = [name for name, v in (("--drift", args.drift), ("--map-tau-scale", args.map_tau_scale)) if v is not None]
        if args.map_robust_weight != 0.2:
            given.append("--map-robust-weight")
        if given:
            ap.error(f"{', '.join(given)} need(s) --historical-control (the historical control arms' CSV)")
    else:
        if not 0 <= args.map_robust_weight < 1:
            ap.error(f"--map-robust-weight must be in [0, 1), got {args.map_robust_weight}")
        if args.map_tau_scale is not None and not (args.map_tau_scale > 0 and math.isfinite(args.map_tau_scale)):
            ap.error(f"--map-tau-scale must be positive, got {args.map_tau_scale}")
        if args.drift is not None and not all(math.isfinite(d) for d in args.drift):
            ap.error("--drift values must be finite numbers (outcome points)")
        clash = [name for name, v in (("--interim", args.interim), ("--interim-weeks", args.interim_weeks), ("--enrich", args.enrich),
                                      ("--mcmc-check", args.mcmc_check)) if v]
        if clash:
            ap.error(f"--historical-control cannot be combined with {', '.join(clash)}: interim looks' predictive probabilities assume a normal "
                     "posterior, an enriched population's control response is not the historical trials', and the MCMC check fits the model "
                     "without borrowing; plan those in a separate run")
    return args


def project_sampler(draws: int = 500, tune: int = 500, chains: int = 2):
    """The project's sampler (inference.sampling, the MMRM's fused log density) as planning.mcmc_check needs it."""
    from inference.sampling import SamplerSettings, sample_posterior

    def sample(built, seed: int):
        idata, _ = sample_posterior(built, SamplerSettings(draws=draws, tune=tune, chains=chains, cores=1, seed=seed), quiet=True)
        return idata.posterior

    return sample


def build(args):
    """ParameterSet and PlanSpec from the arguments (raises PlanningError, or DatasetError for a bad historical CSV)."""
    params, spec, _ = build_plan(args)
    return params, spec


def build_plan(args):
    """ParameterSet, PlanSpec and, with --historical-control, the fitted MapPrior (else None). The historical CSV is
    read first and the MAP prior fitted after every other check, all before any simulation."""
    from planning import (
        AnalysisSettings,
        CalibrationSettings,
        InterimSettings,
        PlannedTrial,
        PlanningError,
        PlanSpec,
        Scenario,
        calibrated_dropout,
        fixed_parameters,
        from_posterior,
        parse_design_priors,
        unit_information_sd,
    )

    historical = None
    if args.historical_control is not None:
        from data.historical import read_historical

        historical = read_historical(args.historical_control)
    if args.posterior is not None:
        params = from_posterior(args.posterior, max_draws=args.max_draws, seed=args.seed)
    else:
        params = fixed_parameters()
    if args.design_prior is not None:
        named, plain = parse_design_priors(args.design_prior)
        if named is not None:
            if args.posterior is None:
                params = params.with_active_arms((params.control_arm, *named))
            params = params.with_effect_prior(per_arm=named)
        elif len(plain) == 1:
            params = params.with_effect_prior(*plain[0])
        elif len(plain) == params.n_active:
            params = params.with_effect_prior(per_arm=dict(zip(params.active_arms, plain)))
        else:
            raise PlanningError(f"{len(plain)} design priors for the {params.n_active} active arm(s) {list(params.active_arms)}: give one for every "
                                "arm, one per arm in that order, or name each (ARM=Normal(M, SD))")
    arms = tuple(params.arms)
    allocation = parse_allocation(args.allocation, arms)
    scale = params.scale
    primary = float(args.primary_week) if args.primary_week is not None else float(scale.treatment_end)
    weeks = tuple(sorted(set(args.weeks))) if args.weeks else tuple(w for w in scale.weeks if w <= primary)
    rates, shape, dropout_source = calibrated_dropout(params.source, weeks, primary, args.dropout, arms)
    entry = args.entry_min if args.entry_min is not None else params.source.get("entry_min")
    entry = None if entry is None or (scale.score_min is not None and entry <= scale.score_min) else float(entry)
    pops = [(None, None)] + list(args.enrich)
    fitted_sites = int(params.source.get("sites", 1))

    def sites(n: int) -> int:  # the fitted trial's number of sites, at most the smallest arm's size
        sizes = PlannedTrial(n, allocation=allocation, arms=arms).arm_sizes
        return args.sites if args.sites is not None else max(1, min(fitted_sites, *sizes))

    designs = [
        PlannedTrial(n, allocation=allocation, primary_week=primary, weeks=weeks, dropout=rates, dropout_mechanism=args.dropout_mechanism,
                     dropout_score_effect=args.dropout_score_effect, dropout_shape=shape, dropout_source=dropout_source, entry_min=entry,
                     enrich_marker=m, enrich_threshold=t, sites=sites(n), site_sd=args.site_sd, arms=arms)
        for m, t in pops
        for n in sorted(set(args.n_per_arm))
    ]
    designs[0].validate(params)  # before the unit-information SD reads the primary week
    effects = [0.0] + [e for e in dict.fromkeys(args.effects) if e != 0.0]
    scenarios = [Scenario("assurance")]
    if args.robust_weight > 0:
        sd = args.robust_sd if args.robust_sd is not None else round(unit_information_sd(params, primary), 3)
        scenarios.append(Scenario("vague", sd=sd))
    scenarios += [Scenario("fixed", e) for e in effects]
    analysis = AnalysisSettings(
        threshold=args.threshold,
        mcid=args.mcid,
        dual=args.dual,
        mcid_prob=args.mcid_prob,
        prior_sd=args.prior_sd if args.prior_sd is not None else 0.1 * scale.score_range,
        method=args.analysis,
        visit_mean_prior_sd=0.25 * scale.score_range,  # the MMRM's priors (models/mmrm.py)
    )
    interim = None
    if args.interim or args.interim_weeks:
        interim = InterimSettings(tuple(args.interim or ()), futility=args.futility, efficacy=args.efficacy, accrual_per_week=args.accrual_per_week,
                                  weeks=tuple(args.interim_weeks or ()))
    calibration = None if args.alpha is None else CalibrationSettings(args.alpha, args.calibrate, args.calibration_sims)
    spec = PlanSpec(designs, scenarios, analysis, sims=args.sims, seed=args.seed, chunk_size=args.chunk_size, effect_scale=args.effect_scale,
                    robust_weight=args.robust_weight, interim=interim, calibration=calibration)
    spec.validate(params)
    map_prior = None
    if historical is not None:
        map_prior, spec = with_borrowing(args, historical, params, spec, effects)
        spec.validate(params)
    return params, spec, map_prior


def with_borrowing(args, historical, params, spec, effects):
    """Fit the MAP prior of the historical control arms (with the plan's seed) and give the spec its robust mixture as the
    analysis' control prior, the drift scenarios (every fixed effect at every drift, one seed stream) and the null at
    drift 0 for the calibration."""
    from dataclasses import replace

    import numpy as np

    from maths.map_prior import fit_map_prior
    from planning import PlanningError, Scenario
    from planning.runner import DRIFT_STREAM

    try:
        mp = fit_map_prior(historical.study, historical.n, historical.mean, historical.sd, tau_scale=args.map_tau_scale,
                           robust_weight=args.map_robust_weight, seed=args.seed, source=str(args.historical_control))
    except ValueError as exc:
        raise PlanningError(f"--historical-control {args.historical_control}: {exc}") from None
    centre, spread = mp.mixture.mean, mp.mixture.sd
    scale = params.scale
    if abs(centre) > scale.score_range:
        raise PlanningError(f"--historical-control {args.historical_control}: the MAP mean change {centre:.3g} is larger than the outcome's whole range "
                            f"({scale.score_range:g} {scale.outcome_label} points); give the control arms' mean change from baseline at the primary "
                            f"visit on the plan's outcome scale")
    drifts = [round(float(d), 2) for d in spread * np.linspace(-2, 2, 7)] if args.drift is None else list(args.drift)
    drifts = sorted(set(drifts) | {0.0})
    drift_scenarios = [Scenario("fixed", e, control_mean=centre + d, drift=d, stream=DRIFT_STREAM) for e in effects for d in drifts]
    prior = tuple(tuple(float(x) for x in v) for v in (mp.robust.weights, mp.robust.means, mp.robust.sds))
    spec = replace(spec, scenarios=[*spec.scenarios, *drift_scenarios], analysis=replace(spec.analysis, control_prior=prior),
                   calibration_scenario=Scenario("fixed", 0.0, control_mean=centre, drift=0.0))
    return mp, spec


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    from data.atomic import OutputBusy, locked_output
    from data.errors import DatasetError
    from planning import PlanningError, plan, smallest_n
    from planning.design import accrual_rate
    from planning.report import plot_plan, render_plan_html

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if args.out.exists() and not args.force:
        return fail(f"output folder {args.out} already exists; choose another --out or pass --force to replace it")
    t_start = time.perf_counter()
    try:
        params, spec, map_prior = build_plan(args)
    except (PlanningError, DatasetError) as exc:
        return fail(str(exc))
    if args.workers is None:
        import os

        work = spec.sims * len(spec.scenarios) * sum(d.n_total for d in spec.designs)
        args.workers = (os.cpu_count() or 1) if work > AUTO_PARALLEL_WORK else 1
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    d0 = spec.designs[0]
    log(
        f"planning: {params.n_draws} parameter draws ({params.family} {params.source.get('kind')}{', effect ' + params.source['effect_prior'] if 'effect_prior' in params.source else ''}); "
        f"{len(spec.designs)} designs x {len(spec.scenarios)} scenarios x {spec.sims} trials; arms {', '.join(d0.arms)} (each active arm vs {d0.arms[0]}); "
        f"primary week {d0.primary_week:g}, {spec.analysis.method} analysis, "
        f"{d0.dropout_mechanism} dropout {dropout_text(d0)} by week {d0.primary_week:g} ({d0.dropout_source}), allocation {d0.allocation_text()}, "
        + (f"interim looks {spec.interim.describe()} (futility PPoS < {spec.interim.futility:g}, "
           f"efficacy P(benefit) > {spec.interim.efficacy:g}, accrual {'%g per week' % spec.interim.accrual_per_week if spec.interim.accrual_per_week else 'n_total / primary week per week'}), "
           if spec.interim is not None else "")
        + (f"thresholds calibrated to {'family-wise ' if d0.n_active > 1 else ''}type I error {spec.calibration.alpha:g} "
           f"({spec.calibration.mode}, {spec.calibration.sims} null trials per design{', under no drift' if map_prior else ''}), "
           if spec.calibration is not None else "")
        + (f"robust MAP prior on the {d0.arms[0]} mean change (mean {map_prior.mixture.mean:.3g}, SD {map_prior.mixture.sd:.3g}, ESS "
           f"{map_prior.ess['robust']['elir']:.0f} by ELIR; {len(map_prior.studies)} historical trials), drifts "
           f"{', '.join(f'{sc.drift:g}' for sc in spec.scenarios if sc.drift is not None and sc.effect == 0)}, "
           if map_prior is not None else "")
        + ("local process" if args.workers <= 1 and not args.scheduler else f"Dask {'scheduler ' + args.scheduler if args.scheduler else f'LocalCluster, {args.workers} workers'}")
    )
    try:
        table, timings = plan(params, spec, workers=args.workers, scheduler=args.scheduler)
    except PlanningError as exc:
        return fail(str(exc))
    best = smallest_n(table, args.target_assurance)
    agreement = None
    if args.mcmc_check:
        from planning.mcmc_check import mcmc_agreement, mmrm_agreement

        mid = spec.designs[len([d for d in spec.designs if d.enrich_marker is None]) // 2]
        log(f"MCMC check ({spec.analysis.method}): {args.mcmc_check} simulated trials at {mid.n_control} per arm")
        if spec.analysis.method == "mmrm":
            agree_table, agreement = mmrm_agreement(params, mid, spec.analysis, project_sampler(), n_trials=args.mcmc_check, seed=args.seed)
        else:
            agree_table, agreement = mcmc_agreement(params, mid, spec.analysis, n_trials=args.mcmc_check, seed=args.seed)
    record = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "parameters": params.to_dict(),
        "analysis": spec.analysis.to_dict(),
        "designs": {
            "arms": list(d0.arms),
            "primary_week": d0.primary_week,
            "weeks": list(d0.weeks),
            "dropout": d0.pooled_dropout,
            "dropout_by_arm": dict(zip(d0.arms, d0.dropout_rates)),
            "dropout_by_visit": {"weeks": list(d0.post_weeks), **{arm: row.round(4).tolist() for arm, row in zip(d0.arms, d0.cumulative_dropout())}},
            "dropout_mechanism": d0.dropout_mechanism,
            "dropout_score_effect": d0.dropout_score_effect,
            "dropout_source": d0.dropout_source,
            "entry_min": d0.entry_min,
            "allocation": dict(zip(d0.arms, (1.0, *d0.ratios))),
            "sites": d0.sites,
            "site_sd": d0.site_sd if d0.site_sd is not None else "per parameter draw",
        },
        "interim": None if spec.interim is None else {
            "fractions": list(spec.interim.fractions), "weeks": list(spec.interim.weeks), "futility": spec.interim.futility, "efficacy": spec.interim.efficacy,
            "accrual_per_week": {f"{d.population} n={d.n_control}": accrual_rate(d, spec.interim) for d in spec.designs},
            "accrual_default": "n_total / primary week (enrolment as long as the treatment period)" if spec.interim.accrual_per_week is None else "given",
        },
        "calibration": None if spec.calibration is None else {
            "alpha": spec.calibration.alpha, "mode": spec.calibration.mode, "sims": spec.calibration.sims,
            "error": "family-wise type I error under the global null (no active arm differs from control), one threshold for every arm"
                     if d0.n_active > 1 else "type I error (no effect)",
            "thresholds": table.drop_duplicates(["population", "n_per_arm"])[
                [c for c in ("population", "n_per_arm", "threshold", "efficacy_threshold", "calibration_type1", "calibration_type1_mcse") if c in table]
            ].to_dict(orient="records"),
        },
        "robust_prior": {"weight": spec.robust_weight, "vague_sd": next((sc.sd for sc in spec.scenarios if sc.kind == "vague"), None)},
        "borrowing": None if map_prior is None else borrowing_record(map_prior, params, spec, table),
        "smallest_n": best.to_dict(orient="records"),
        "timings": timings,
        "mcmc_agreement": agreement,
    }
    try:
        with locked_output(args.out, overwrite=args.force) as tmp:
            table.to_csv(tmp / "plan.csv", index=False, float_format="%.6g")
            best.to_csv(tmp / "smallest_n.csv", index=False)
            threshold = "the design's calibrated threshold" if spec.calibration is not None else f"{spec.analysis.threshold:g}"
            rule = f"{params.scale.outcome_label}: {'each active arm ' if d0.n_active > 1 else ''}success if P(effect<0) > {threshold}" + (
                f" and P(effect<-{spec.analysis.mcid:g}) > {spec.analysis.mcid_prob:g}" if spec.analysis.dual else "") + f" (effect: arm - {d0.arms[0]})"
            plot_plan(table, tmp / "plan.png", args.target_assurance, title=rule, control=d0.arms[0])
            if map_prior is not None:
                (tmp / "map_prior.json").write_text(map_prior.to_json() + "\n")
            (tmp / "plan.html").write_text(render_plan_html(table, html_settings(args, params, spec, rule), (tmp / "plan.png").read_bytes(), best,
                                                            control=d0.arms[0], borrowing=record["borrowing"]), encoding="utf-8")
            if agreement is not None:
                agree_table.to_csv(tmp / "mcmc_agreement.csv", index=False, float_format="%.6g")
            record["timings"]["total_s"] = time.perf_counter() - t_start
            (tmp / "plan.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    except (FileExistsError, OutputBusy) as exc:
        return fail(str(exc))
    if not args.quiet:
        print(format_table(table))
        if map_prior is not None:
            print(format_drift_table(table))
        for row in best.itertuples():
            reached = f"n per arm {row.n_per_arm:g} (conservative, assurance - 2 MCSE: {row.n_per_arm_conservative:g})" if row.n_per_arm == row.n_per_arm else "not reached on this grid"
            which = "at least one arm" if row.arm == "any" else f"arm {row.arm}"
            print(f"target assurance {row.target_assurance:g}, population {row.population}, {which}: {reached}; "
                  f"max assurance {row.max_assurance:.3f} at n per arm {row.at_n_per_arm:g}")
        if agreement is not None:
            print(f"fast analysis vs MCMC: decisions agree in {agreement['agreement_rate']:.1%} of {agreement['trials']} trials")
        print(f"{timings['trials']} simulated trials in {timings['wall_s']:.1f} s ({timings['trials_per_s']:.0f} per second)")
        print(f"\nwrote {args.out}/")
    return 0


def dropout_text(design) -> str:
    """'0.2 placebo, 0.3 low, 0.25 high': the loss by the primary week per arm."""
    return ", ".join(f"{r:g} {a}" for a, r in zip(design.arms, design.dropout_rates))


def html_settings(args, params, spec, rule: str) -> list[tuple[str, str]]:
    """The settings plan.html states, as (label, value) pairs (arm names from the data)."""
    d0 = spec.designs[0]
    control = d0.arms[0]
    src = params.source
    if src.get("kind") == "posterior":
        source = f"posterior {src.get('path', '')} (model {src.get('model', '?')}, {params.n_draws} draws)"
    else:
        source = f"{src.get('note', src.get('kind', ''))}"
    if "effect_prior" in src:
        source += f"; design prior on the effect {src['effect_prior']}"
    rows = [
        ("parameter source", source),
        ("arms", f"{control} (control), active: {', '.join(d0.arms[1:])}; each active arm is compared with {control}"
         + ("; a design succeeds for an arm, and for 'any' (at least one arm)" if d0.n_active > 1 else "")),
        ("analysis", f"{spec.analysis.method}; {rule}"),
        ("analysis prior on the effect", f"Normal(0, {spec.analysis.prior_sd:g})"),
        ("primary week", f"{d0.primary_week:g} (visits {', '.join(f'{w:g}' for w in d0.weeks)})"),
        ("dropout mechanism", f"{d0.dropout_mechanism} (score effect {d0.dropout_score_effect:g} log-odds per 5 points)"
         if d0.dropout_mechanism != "mcar" else "mcar"),
        ("dropout by the primary week", f"{dropout_text(d0)} ({d0.dropout_source})"),
        ("allocation " + ":".join(d0.arms), ":".join(f"{r:g}" for r in (1.0, *d0.ratios))),
        ("entry criterion", "none" if d0.entry_min is None else f"baseline score >= {d0.entry_min:g}"),
        ("sites", "1" if d0.sites == 1 else f"{d0.sites}, offsets Normal(0, SD) with SD "
         + (f"{d0.site_sd:g}" if d0.site_sd is not None else f"from the parameter draws (mean {float(sum(params.site_sd) / len(params.site_sd)):.3g})")),
        (f"participants per arm ({control})", ", ".join(str(n) for n in sorted(set(args.n_per_arm)))),
        ("populations", ", ".join(dict.fromkeys(d.population for d in spec.designs))),
        ("fixed effects (type I error at 0, power)", ", ".join(sc.label.removeprefix("effect=") for sc in spec.scenarios
                                                              if sc.kind == "fixed" and sc.drift is None)
         + (" (each for every active arm; 0 is the global null)" if d0.n_active > 1 else "")),
        ("effect scale", f"{spec.effect_scale:g}"),
        ("robust prior", "none" if spec.robust_weight == 0 else
         f"weight {spec.robust_weight:g} on Normal(0, {next(sc.sd for sc in spec.scenarios if sc.kind == 'vague'):g})"),
        ("target assurance", f"{args.target_assurance:g}"),
    ]
    if spec.interim is None:
        rows.append(("interim looks", "none"))
    else:
        it = spec.interim
        rows += [
            ("interim looks", it.describe()),
            ("interim thresholds", f"futility if PPoS < {it.futility:g}; efficacy if P(effect<0) > {it.efficacy:g}"
             + ("; per active arm: a stopped arm enrols no more, the others continue" if d0.n_active > 1 else "")),
            ("accrual per week", f"{it.accrual_per_week:g}" if it.accrual_per_week else "n_total / primary week"),
        ]
    if spec.borrowing:
        prior = spec.analysis.control_mixture()
        rows.append(("control prior (borrowing)", f"robust MAP prior from {args.historical_control} on the {control} arm's mean change at week "
                     f"{d0.primary_week:g}: a mixture of {len(prior)} normals, mean {prior.mean:.3g}, SD {prior.sd:.3g} (vague component weight "
                     f"{args.map_robust_weight:g}); the rows with a drift also analysed without it"))
    if spec.calibration is not None:
        c = spec.calibration
        if spec.borrowing:
            rows.append(("type I error calibration", f"at most {c.alpha:g} under no drift (the {control} arm's true mean change at the MAP mean), "
                         f"{c.sims} null trials per design, each analysis (with and without borrowing) its own threshold on the same trials; "
                         "the drift rows give the type I error under drift with those thresholds"))
        elif d0.n_active > 1:
            rows.append(("type I error calibration", f"family-wise type I error at most {c.alpha:g} under the global null (no active arm differs from "
                         f"{control}): one threshold for every arm, calibrated on the largest P(benefit) over the arms (futility non-binding), "
                         + ("the final threshold, interim efficacy as given" if c.mode == "final" else "one threshold at every analysis")
                         + f", {c.sims} global-null trials per design; thresholds per design in the tables"))
        else:
            rows.append(("type I error calibration", f"at most {c.alpha:g} (futility non-binding), "
                         + ("the final threshold, interim efficacy as given" if c.mode == "final" else "one threshold at every analysis")
                         + f", {c.sims} null trials per design; thresholds per design in the tables"))
    rows += [("simulated trials per design and scenario", f"{spec.sims}"), ("seed", f"{spec.seed}")]
    return rows


def borrowing_record(map_prior, params, spec, table) -> dict:
    """plan.json's `borrowing` (and plan.html's section): the MAP prior's summary, the historical trials, the drifts,
    the control response of the parameter draws (the other scenarios') and the thresholds of both analyses."""
    import numpy as np

    from planning.simulate import control_mean_change

    d0 = spec.designs[0]
    draws = np.unique(np.linspace(0, params.n_draws - 1, min(params.n_draws, 1000)).astype(int))
    own = float(control_mean_change(params, d0, draws).mean())
    centre = map_prior.mixture.mean
    settings = map_prior.settings
    cal = spec.calibration
    return {
        "file": "map_prior.json",
        "source": settings.get("source"),
        "historical": [{"study": s, "n": int(n), "mean": float(m), "sd": float(sd)}
                       for s, n, m, sd in zip(map_prior.studies, map_prior.n, map_prior.mean, map_prior.sd)],
        "control_arm": d0.arms[0],
        "outcome": params.scale.outcome_label,
        "primary_week": d0.primary_week,
        "map_mean": centre,
        "map_sd": map_prior.mixture.sd,
        "components": len(map_prior.mixture),
        "robust_weight": settings["robust_weight"],
        "vague_sd": settings["vague_sd"],
        "sigma": settings["sigma"],
        "tau_scale": settings["tau_scale"],
        "tau_median": map_prior.tau["median"],
        "ess": map_prior.ess,
        "drifts": sorted({sc.drift for sc in spec.scenarios if sc.drift is not None}),
        "draws_control_mean": own,
        "draws_drift": own - centre,
        "calibrated": None if cal is None else {"alpha": cal.alpha, "sims": cal.sims, "under": "no drift (control arm at the MAP mean)"},
        "thresholds": table.drop_duplicates(["population", "n_per_arm", "borrowing"])[["population", "n_per_arm", "borrowing", "threshold"]]
        .loc[lambda t: t["borrowing"].notna()].to_dict(orient="records"),
    }


def format_drift_table(table) -> str:
    """Type I error and power against drift, with (map) and without (none) borrowing, per design (the family's rows with
    several active arms)."""
    rows = table[table["drift"].notna()]
    if "any" in set(rows["arm"]):
        rows = rows[rows["arm"] == "any"]
    rows = rows.assign(what=[("type I" if e == 0 else f"power {e:g}") + f" {b}" for e, b in zip(rows["effect"].fillna(0), rows["borrowing"])],
                       cell=[f"{p:.3f} ({m:.3f})" for p, m in zip(rows["p_success"], rows["p_success_mcse"])])
    wide = rows.pivot_table(index=["population", "n_per_arm", "drift"], columns="what", values="cell", aggfunc="first", sort=False)
    return "P(success) (MCSE) against drift (true control mean change - MAP mean), with (map) and without (none) borrowing\n" + wide.to_string()


def format_table(table) -> str:
    if "drift" in table:
        table = table[table["drift"].isna()]
    index = ["population", "n_per_arm", "arm"]
    wide = table.pivot_table(index=index, columns="scenario", values="p_success", sort=False)
    mcse = table.pivot_table(index=index, columns="scenario", values="p_success_mcse", sort=False)
    first = table[table["scenario"] == "assurance"].set_index(index)
    out = wide.copy().astype(object)
    for col in wide.columns:
        out[col] = [f"{p:.3f} ({m:.3f})" for p, m in zip(wide[col], mcse[col])]
    if first["robust_weight"].iloc[0] > 0:
        out["robust assurance"] = [f"{p:.3f} ({m:.3f})" for p, m in zip(first["assurance_robust"], first["assurance_robust_mcse"])]
    out["95% width"] = first["interval_width"].round(2)
    if "calibration_type1" in first:
        out["threshold"] = first["threshold"].round(4)
        if "efficacy_threshold" in first:
            out["efficacy threshold"] = first["efficacy_threshold"].round(4)
        out["calibration type I"] = [f"{p:.3f} ({m:.3f})" for p, m in zip(first["calibration_type1"], first["calibration_type1_mcse"])]
    return "P(success) (MCSE)\n" + out.to_string()


if __name__ == "__main__":
    raise SystemExit(main())
