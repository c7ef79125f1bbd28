#!/usr/bin/env python
"""Fit the trial's models and write InferenceData, tables and a convergence verdict.

    python fit.py                                  # null, treatment and headline models on the bundled trial, compared
    python fit.py --data my_trial --model headline --out results/my_trial
    python fit.py --list-models

Exit codes: 0 success; 1 convergence verdict failed under --strict; 2 bad input or arguments
(or the output folder exists / is being written by another run); 3 the sampler failed, or a
model's results could not be written or checked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

from data import DEFAULT_DATASET, DatasetError, load_dataset  # noqa: E402
from data.atomic import OutputBusy, locked_output  # noqa: E402
from data.schema import changes_of  # noqa: E402

DEFAULT_MODELS = ("null", "treatment", "headline")  # the main job's comparison; only those registered are used


def parse_args(argv):
    from models.registry import REGISTRY
    from diagnostics.loo import KFOLD_K
    from diagnostics.ppc import REMISSION_CUTOFF
    from models.sampling import SAMPLERS, SamplerSettings

    d = SamplerSettings()
    ap = argparse.ArgumentParser(prog="fit.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATASET, help="dataset folder (default: the bundled synthetic trial)")
    ap.add_argument("--model", nargs="+", default=[m for m in DEFAULT_MODELS if m in REGISTRY], metavar="NAME", help=f"model(s) to fit; registered: {', '.join(REGISTRY)}")
    ap.add_argument("--likelihood", default="normal", choices=("normal", "student", "censored"), help="outcome likelihood")
    ap.add_argument("--draws", type=int, default=d.draws, help="posterior draws per chain")
    ap.add_argument("--tune", type=int, default=d.tune, help="tuning steps per chain")
    ap.add_argument("--chains", type=int, default=d.chains)
    ap.add_argument("--cores", type=int, default=d.cores)
    ap.add_argument("--target-accept", type=float, default=d.target_accept)
    ap.add_argument("--prior-draws", type=int, default=d.prior_draws, help="prior predictive draws")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--sampler", default=d.sampler, choices=SAMPLERS)
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="models fitted at once, each in its own process (default: one per model, at most one per CPU core; "
        "1 fits them one after another). The numbers do not depend on it",
    )
    ap.add_argument("--plain", action="store_true", help="sample the plain model even where an exact fast variant exists (for comparison)")
    ap.add_argument("--mcid", type=float, default=2.0, help="minimal clinically important difference, outcome points")
    ap.add_argument("--remission-cutoff", type=float, default=REMISSION_CUTOFF, help="remission: score at or below this (posterior predictive checks)")
    ap.add_argument(
        "--kfold",
        type=int,
        default=0,
        help=f"refit units with Pareto k too high: grouped K-fold by participant (e.g. {KFOLD_K}; K x models extra fits). "
        "Default 0: no refits, such elpd values are marked unreliable and diagnose.py --kfold K runs them later on the saved fits",
    )
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
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0)
    from models.registry import REGISTRY

    if args.list_models:
        width = max(len(n) for n in REGISTRY)
        for name, spec in REGISTRY.items():
            print(f"{name:<{width}}  {spec.description}")
        return 0

    from models import ModelDataError, build_design, get
    from models.sampling import SamplerSettings

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    try:
        specs = [get(n) for n in dict.fromkeys(args.model)]
    except KeyError as exc:
        return fail(exc.args[0])
    for spec in specs:
        if args.likelihood not in spec.likelihoods:
            return fail(f"model '{spec.name}' supports likelihoods {spec.likelihoods}, not '{args.likelihood}'")
    if args.out.exists() and not args.force:
        return fail(f"output folder {args.out} already exists; choose another --out or pass --force to replace it")
    try:
        ds = load_dataset(args.data)
    except DatasetError as exc:
        return fail(str(exc))
    changes = changes_of(ds)
    if changes:  # what the loader accepted but altered is never silent
        print(f"data: the loader changed {len(changes)} thing(s) (saved in run.json):", file=sys.stderr)
        for change in changes:
            print(f"  - {change['text']}", file=sys.stderr)
    design = build_design(ds)
    built = []
    for spec in specs:
        try:
            built.append((spec, spec.build(design, likelihood=args.likelihood)))
        except ModelDataError as exc:
            return fail(str(exc))

    settings = SamplerSettings(
        sampler=args.sampler,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        cores=args.cores,
        target_accept=args.target_accept,
        prior_draws=args.prior_draws,
        seed=args.seed,
        fast=not args.plain,
    )
    try:
        with locked_output(args.out, overwrite=args.force) as tmp:
            all_ok = run_models(built, design, ds, settings, args, tmp)
    except (FileExistsError, OutputBusy) as exc:
        return fail(str(exc))
    except (SamplingFailed, FinishingFailed) as exc:
        print(f"error: {exc}\nnothing was written to {args.out}", file=sys.stderr)
        return 3
    print(f"\nwrote {args.out}/")
    if args.strict and not all_ok:
        print("strict: convergence verdict failed", file=sys.stderr)
        return 1
    return 0


def finish_fit(name: str, idata, model, design, *, out: str, data_source: str, likelihood: str, settings, info: dict,
               changes: list, mcid: float, remission_cutoff: float) -> dict:
    """Everything one model's fit needs before the comparison, run in its worker process beside the
    other fits (or in this process with --jobs 1): the provenance stamp, the convergence verdict, the
    estimates, the files in out/<name>/, and for visit-score models the PPC, LOO and figures."""
    from diagnostics.convergence import verdict
    from diagnostics.run import diagnose_model
    from models import get
    from models.estimates import estimates_table
    from models.idata_io import save_idata, stamp
    from models.priors import to_json
    from planning.params import design_constants

    t0 = time.perf_counter()
    spec = get(name)
    priors = getattr(model, "priors_used", None)
    notes = getattr(model, "data_notes", None) or {}  # model-specific data use, e.g. biomarker values imputed / censored
    stamp(
        idata,
        model=name,
        likelihood=likelihood,
        priors=to_json(priors) if priors else "{}",
        seed=settings.seed,
        data_checksum=design.checksum,
        data_source=data_source,
        settings=settings.__dict__,
        data_summary=info,
        data_notes=notes,
        data_changes=changes,
        design_constants=design_constants(design),  # time coding and marker scaling, for plan.py
    )
    check = verdict(idata)
    table = estimates_table(idata, design.meta, mcid=mcid)
    if spec.extra_estimates is not None:
        import pandas as pd

        table = pd.concat([table, spec.extra_estimates(idata, design, mcid)], ignore_index=True)
    folder = Path(out) / name
    folder.mkdir()
    save_idata(idata, folder / "idata.nc")
    check.table.to_csv(folder / "convergence.csv")
    summary_table(idata).to_csv(folder / "summary.csv")
    table.to_csv(folder / "estimates.csv", index=False)
    (folder / "convergence.txt").write_text(check.text() + "\n")
    t1 = time.perf_counter()
    diagnosed = None
    if is_visit_fit(idata):  # its PPC, LOO and figures, for the report
        labels = (design.meta.control_arm, design.meta.treatment_arm)
        diagnosed = diagnose_model(name, idata, table, design.treated, labels, remission_cutoff, spec.description, check=check)
    return {"check": check, "table": table, "notes": notes, "diagnostics": diagnosed, "finish_s": t1 - t0, "diagnose_s": time.perf_counter() - t1}


def run_models(built, design, ds, settings, args, out: Path) -> bool:
    from functools import partial

    from models.estimates import format_estimates
    from models.idata_io import versions
    from models.jobs import WorkerFailed, default_jobs, fit_models
    from models.sampling import sample_all

    all_ok = True
    fitted = {}  # name -> (idata, estimates, spec), for the comparison and report
    diagnosed, diagnose_s = {}, 0.0  # per-model diagnostics of the visit-score fits
    run = {"data": str(args.data), "checksum": design.checksum, "data_changes": changes_of(ds), "models": {}, "settings": settings.__dict__, "versions": versions()}
    info = data_summary(design)
    if not args.quiet:
        print(info_text(info), file=sys.stderr)
    models = {spec.name: model for spec, model in built}
    specs = {spec.name: spec for spec, _ in built}
    jobs = args.jobs if args.jobs is not None else default_jobs(len(built))
    if not args.quiet and jobs > 1 and len(built) > 1:
        print(f"\nfitting {len(built)} models, {jobs} at a time (one process each; --jobs 1 fits them in turn)", file=sys.stderr)

    def in_process(name):
        if not args.quiet:
            print(f"\n== {name}: {specs[name].description}", file=sys.stderr)
        return (*sample_all(models[name], settings, quiet=args.quiet), models[name], design)

    finish = partial(
        finish_fit, out=str(out), data_source=str(args.data), likelihood=args.likelihood, settings=settings, info=info,
        changes=changes_of(ds), mcid=args.mcid, remission_cutoff=args.remission_cutoff,
    )
    # the biggest models first, so the longest compile starts at once and the small ones fill the other core
    by_size = sorted(models, key=lambda n: -(len(models[n].free_RVs) + len(models[n].potentials) + len(models[n].deterministics)))
    fits = fit_models(
        list(models), args.data, args.likelihood, settings, jobs, quiet=args.quiet, in_process=in_process, submit_order=by_size,
        after=finish,  # stamp, verdict, estimates, files and diagnostics, in each worker beside the other fits
    )
    while True:
        try:
            name, idata, timings, done = next(fits)
        except StopIteration:
            break
        except WorkerFailed as exc:  # the sampler's failure becomes advice, not a traceback
            if exc.stage == "after":
                raise FinishingFailed(f"saving or checking the fit of model '{exc.model}' failed: {exc.cause}") from exc
            raise SamplingFailed(exc.model, exc.cause) from exc
        spec, check, table, notes = specs[name], done["check"], done["table"], done["notes"]
        if notes.get("text") and not args.quiet:
            print(f"  {notes['text']}", file=sys.stderr)
        wall = timings.get("worker_wall_s", timings.get("total_s", 0.0))  # fit only; finishing is timed apart
        timings.update(wall_s=wall, finish_s=done["finish_s"], diagnose_s=done["diagnose_s"])
        run["models"][spec.name] = {"converged": check.ok, "timings": timings, "divergences": check.divergences}
        if notes:
            run["models"][spec.name]["data_notes"] = notes
        fitted[spec.name] = (idata, table, spec)
        if done["diagnostics"] is not None:
            diagnosed[spec.name] = done["diagnostics"]
            diagnose_s += done["diagnose_s"]
        all_ok &= check.ok
        print(f"\n{spec.name}: estimates ({design.meta.outcome_label} points unless a row says otherwise; lower scores are better)")
        print(format_estimates(table))
        print(check.text())
        print(f"({timings['wall_s']:.1f} s: compile {timings.get('compile_s', 0):.1f}, sampling {timings['sample_s']:.1f})")
    # the report's checks (trajectory PPC, visit/participant LOO) need visit-score outcomes; models of other
    # outcomes (biomarker change, mediation) keep their convergence.txt and estimates.csv and are listed here
    # (the MMRM models change from baseline, 'change', not the scores 'y': its checks are its own estimates and verdict)
    visit_fits = {n: f for n, f in fitted.items() if n in diagnosed}
    skipped = [n for n in fitted if n not in visit_fits]
    if skipped:
        run["not_in_report"] = skipped
        print(f"note: {', '.join(skipped)}: outcome is not the visit scores (y), so no trajectory checks or LOO comparison in the report")
    if visit_fits:
        run["diagnostics"] = diagnose_and_report(visit_fits, design, settings, args, out, diagnosed)
        run["diagnostics"]["per_model_s"] = diagnose_s
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    return all_ok


def is_visit_fit(idata) -> bool:
    """Whether a fit models the visit scores `y` (the report's trajectory checks and LOO need them)."""
    return "constant_data" in idata.groups() and "obs_week" in idata.constant_data and "y" in idata.observed_data


def diagnose_and_report(fitted: dict, design, settings, args, out: Path, diagnosed: dict | None = None) -> dict:
    """PPC, LOO (with refits where Pareto k is high), the model comparison and report.html, into `out`.

    `diagnosed`: per-model diagnostics already computed (diagnostics.run.diagnose_model), reused as they are."""
    from diagnostics.run import REFIT_MIN_DRAWS, diagnose_run, write_outputs

    t0 = time.perf_counter()
    builders = {name: (lambda d, spec=spec: spec.build(d, likelihood=args.likelihood)) for name, (_, _, spec) in fitted.items()}
    diag = diagnose_run(
        {name: f[0] for name, f in fitted.items()},
        {name: f[1] for name, f in fitted.items()},
        design=design,
        builders=builders,
        settings=settings,
        kfold=args.kfold,
        remission_cutoff=args.remission_cutoff,
        labels=(design.meta.control_arm, design.meta.treatment_arm),
        descriptions={name: f[2].description for name, f in fitted.items()},
        title=design.meta.title or str(args.data),
        log=(lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True)),
        refit_min_draws=REFIT_MIN_DRAWS,
        precomputed=diagnosed,
    )
    report = write_outputs(diag, out)
    print()
    for level, sentence in diag.plain_language.items():
        print(f"comparison ({level} level): {sentence}")
    for note in diag.comparison_notes:
        print(f"note: {note}")
    print(f"report: {args.out / report.name}  ({time.perf_counter() - t0:.1f} s for diagnostics, comparison and report)")
    return {
        "comparison": {level: table.reset_index().to_dict(orient="records") for level, table in diag.comparisons.items()},
        "plain_language": diag.plain_language,
        "notes": diag.comparison_notes,
        "ppc_flags": {name: m.ppc.flags() for name, m in diag.models.items()},
        "wall_s": time.perf_counter() - t0,
    }


class FinishingFailed(RuntimeError):
    """A model sampled but writing or checking its results failed (e.g. a full disk): exit code 3, no sampler advice."""


class SamplingFailed(RuntimeError):
    """A model's sampling raised (e.g. no chain could initialise): reported with advice, exit code 3."""

    def __init__(self, model: str, exc: BaseException):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        cause = " ".join(line.strip() for line in str(exc).splitlines()[1:4] if line.strip() and "backtrace" not in line.lower())
        text = f"sampling model '{model}' failed: {type(exc).__name__}: {first}" + (f" ({cause})" if cause else "")
        if "init" in str(exc).lower():
            advice = (
                "no chain could start: the log-density is not finite at the starting points. Check the data for "
                "extreme values, try the robust model (--likelihood student), another --seed, or --sampler pymc"
            )
        else:
            advice = (
                "try more tuning (--tune), a higher --target-accept (e.g. 0.95), the robust model "
                "(--likelihood student), or --sampler pymc to cross-check"
            )
        super().__init__(f"{text}\nadvice: {advice}")


def summary_table(idata):
    import arviz as az

    names = [v for v in idata.posterior.data_vars if v not in ("participant_raw", "participant_effects") and not v.startswith("marker_missing") and not v.startswith("marker_censored")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return az.summary(idata, var_names=names, hdi_prob=0.94)


def data_summary(design) -> dict:
    import numpy as np

    treated = design.treated.astype(bool)
    info = {
        "participants": int(design.n_participants),
        "by_arm": {design.meta.treatment_arm: int(treated.sum()), design.meta.control_arm: int((~treated).sum())},
        "arms": {"control": design.meta.control_arm, "treatment": design.meta.treatment_arm},
        "sites": len(design.sites),
        "visits_observed": int(len(design.y)),
        "observed_by_week": {int(w): int((design.obs_week == w).sum()) for w in design.weeks},
    }
    if design.baseline is not None:
        b = design.baseline
        info["baseline_markers_imputed"] = int(b.n_missing)
        info["baseline_markers_below_lod"] = int(b.n_censored)
        info["baseline_markers_observed"] = int(np.sum(~b.missing & ~b.censored))
    return info


def info_text(info: dict) -> str:
    arms = ", ".join(f"{k} {v}" for k, v in info["by_arm"].items())
    weeks = ", ".join(f"w{w}: {n}" for w, n in info["observed_by_week"].items())
    text = f"data: {info['participants']} participants ({arms}), {info['sites']} sites, {info['visits_observed']} visits ({weeks})"
    if "baseline_markers_imputed" in info:
        text += (
            f"\nbaseline biomarker values: {info['baseline_markers_observed']} observed, "
            f"{info['baseline_markers_imputed']} missing (imputed in the model), {info['baseline_markers_below_lod']} below detection limit (censored)"
        )
    return text


if __name__ == "__main__":
    raise SystemExit(main())
