#!/usr/bin/env python
"""Fit the trial's models and write InferenceData, tables, the comparison and report.html.

    python fit.py                                  # null, treatment and headline models on the bundled trial, compared
    python fit.py --data my_trial --model headline --out results/my_trial
    python fit.py --model mmrm treatment --sensitivity     # also J2R, CR, CIR, tipping point, responders, prior sensitivity
    python fit.py --model mmrm --sensitivity --sensitivity-weeks 12 16   # ... reported at the end of treatment and follow-up
    python fit.py --data data/dose --model mmrm --contrast "high - low" --contrast "pooled active - placebo"
    python fit.py --adam adsl.xpt adqs.xpt --param HAMD17 --reference Placebo --model mmrm   # CDISC ADaM datasets (docs/adam.md)
    python fit.py --adam data/adam_trials/default/adsl.xpt data/adam_trials/default/adqs.xpt --model mmrm --sensitivity \
        --ice-strategy "ADVERSE EVENT=J2R,LACK OF EFFICACY=J2R,*=MAR"
    python fit.py --list-models

Exit codes: 0 success; 1 convergence verdict failed under --strict; 2 bad input or arguments, refused
before sampling starts (or the output folder exists / is being written by another run); 3 a failure
once sampling has started (sampling, saving or checking a fit, diagnostics, LOO, report, writing):
the message names the stage and the model, and nothing is written to --out.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

from deptrial import api  # noqa: E402
from deptrial.api import DEFAULT_MODELS  # noqa: E402
from deptrial.cli import add_adam_arguments, add_sensitivity_arguments, check_adam_arguments, check_sensitivity_arguments  # noqa: E402


def parse_args(argv):
    from data import DEFAULT_DATASET
    from diagnostics.loo import KFOLD_K
    from diagnostics.ppc import REMISSION_CUTOFF
    from inference.sampling import MASS_MATRICES, SAMPLERS, SamplerSettings
    from models import REGISTRY
    from models.prior_file import PRESETS

    d = SamplerSettings()
    ap = argparse.ArgumentParser(prog="fit.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default: the bundled synthetic trial); --adam reads "
                    "CDISC ADaM datasets instead")
    ap.add_argument("--model", nargs="+", default=[m for m in DEFAULT_MODELS if m in REGISTRY], metavar="NAME", help=f"model(s) to fit; registered: {', '.join(REGISTRY)}")
    ap.add_argument("--likelihood", default="normal", choices=("normal", "student", "censored"), help="outcome likelihood")
    ap.add_argument("--draws", type=int, default=d.draws, help="posterior draws per chain")
    ap.add_argument("--tune", type=int, default=d.tune, help="tuning steps per chain")
    ap.add_argument("--chains", type=int, default=d.chains)
    ap.add_argument("--cores", type=int, default=d.cores)
    ap.add_argument("--target-accept", type=float, default=d.target_accept)
    ap.add_argument("--mass-matrix", default=d.mass_matrix, choices=MASS_MATRICES,
                    help="nutpie's mass-matrix adaptation: low_rank (diagonal plus the draws' leading correlations; the default) or diag")
    ap.add_argument("--prior-draws", type=int, default=d.prior_draws, help="prior predictive draws")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--sampler", default=d.sampler, choices=SAMPLERS)
    ap.add_argument("--jobs", type=int, default=None, help="models fitted at once, each in its own process (default: one per model, "
                    "at most one per CPU core; 1 fits them one after another). The numbers do not depend on it")
    ap.add_argument("--plain", action="store_true", help="sample the plain model even where an exact fast variant exists (for comparison)")
    ap.add_argument("--mcid", type=float, default=2.0, help="minimal clinically important difference, outcome points")
    ap.add_argument("--priors", type=Path, default=None, metavar="FILE.toml", help="prior overrides: [<model>.<prior>] or [all.<prior>] "
                    "tables of dist and parameters, and optionally preset = \"sceptical\" (docs/models.md#prior-sensitivity)")
    ap.add_argument("--prior-preset", default=None, choices=PRESETS, help="the treatment-effect prior of every fitted model: sceptical "
                    "(centred on 0, P(|effect| > MCID) = 10%%) or enthusiastic (centred on a benefit of one MCID); priors named in --priors win")
    ap.add_argument("--remission-cutoff", type=float, default=REMISSION_CUTOFF, help="remission: score at or below this (posterior predictive "
                    "checks, and responders.csv with --sensitivity)")
    ap.add_argument("--contrast", action="append", default=None, metavar='"A - B"', help="a linear contrast of the arm means "
                    "to add to each model's contrasts.csv (repeat for several): \"high - low\", \"pooled active - placebo\" (active arms "
                    "weighted by their size), \"mean active - placebo\" (equally), \"0.5*low + 0.5*high - placebo\", or \"dose trend\" "
                    "(slope per dose unit, needs [arms.dose] in dataset.toml); arm labels as in dataset.toml. contrasts.csv always has "
                    "each arm's mean change, each active arm vs control and P(each arm is best)")
    add_sensitivity_arguments(ap)
    ap.add_argument("--historical-control", nargs="+", type=Path, default=None, metavar="PATH", help="past trials' control arms: "
                    "a historical.csv (study, n, mean, sd: mean change from baseline at the primary visit and its SD) or two or "
                    "more trial folders; their robust MAP prior goes on the control arm's change at the end of treatment of the "
                    "MMRM and trajectory models (map_prior.json, a report section; docs/models.md)")
    ap.add_argument("--map-robust-weight", type=float, default=0.2, help="weight of the MAP prior's vague component (0: none; "
                    "default 0.2)")
    ap.add_argument("--map-tau-scale", type=float, default=None, help="HalfNormal scale of the between-trial SD (default: half "
                    "the past trials' unit SD)")
    add_adam_arguments(ap)
    ap.add_argument("--kfold", type=int, default=0, help=f"refit units with Pareto k too high: grouped K-fold by participant (e.g. {KFOLD_K}; "
                    "K x models extra fits). Default 0: no refits, such elpd values are marked unreliable and diagnose.py --kfold K runs them later on the saved fits")
    ap.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    ap.add_argument("--strict", action="store_true", help="exit 1 if the convergence verdict fails")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--list-models", action="store_true", help="print the registered models and exit")
    args = ap.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        ap.error("--jobs must be at least 1")
    if args.kfold < 0 or args.kfold == 1:
        ap.error("--kfold must be 0 (no refits) or at least 2")
    for name in ("draws", "tune", "chains", "cores", "prior_draws"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.5 <= args.target_accept < 1:
        ap.error("--target-accept must be in [0.5, 1)")
    if not 0 <= args.map_robust_weight < 1:
        ap.error("--map-robust-weight must be in [0, 1)")
    if args.map_tau_scale is not None and not args.map_tau_scale > 0:
        ap.error("--map-tau-scale must be positive")
    check_adam_arguments(ap, args)
    if args.adam_options is not None and args.data is not None:
        ap.error("--data and --adam are alternatives: give the dataset folder or the ADaM files, not both")
    if args.data is None:
        args.data = DEFAULT_DATASET
    check_sensitivity_arguments(ap, args)
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0)
    if args.list_models:
        models = api.list_models()
        width = max(len(n) for n in models)
        for name, description in models.items():
            print(f"{name:<{width}}  {description}")
        return 0
    from data import DatasetError
    from data.atomic import OutputBusy
    from inference.sampling import SamplerSettings
    from models import ModelDataError
    from models.prior_file import read_prior_file

    settings = SamplerSettings(
        sampler=args.sampler, draws=args.draws, tune=args.tune, chains=args.chains, cores=args.cores,
        target_accept=args.target_accept, mass_matrix=args.mass_matrix, prior_draws=args.prior_draws, seed=args.seed, fast=not args.plain,
    )
    try:
        priors = read_prior_file(args.priors) if args.priors is not None else None  # refused before the data are read
        run = api.fit_trial(
            args.adam_options or args.data, args.model, settings, out=args.out, likelihood=args.likelihood, mcid=args.mcid,
            remission_cutoff=args.remission_cutoff, kfold=args.kfold, jobs=args.jobs, force=args.force,
            quiet=args.quiet, echo=print, priors=priors, prior_preset=args.prior_preset,
            sensitivity=args.sensitivity, ice=args.ice, deltas=args.deltas, tipping_threshold=args.tipping_threshold,
            contrasts=args.contrast, sensitivity_weeks=args.sensitivity_weeks, historical_control=args.historical_control,
            map_robust_weight=args.map_robust_weight, map_tau_scale=args.map_tau_scale,
        )
    except api.RunFailed as exc:  # once sampling has started: the stage that failed, and what is left at --out
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyError as exc:
        return fail(exc.args[0])
    except (ValueError, DatasetError, ModelDataError, FileExistsError, OutputBusy) as exc:  # refused before sampling
        return fail(str(exc))
    print(f"\nwrote {args.out}/")
    if args.strict and not run.converged:
        print("strict: convergence verdict failed", file=sys.stderr)
        return 1
    return 0


def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
