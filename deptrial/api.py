"""The Python entry points: fit a trial's models and write everything `python fit.py` writes; re-diagnose saved fits.

    import deptrial
    run = deptrial.fit_trial(deptrial.load_dataset(deptrial.DEFAULT_DATASET), ["null", "treatment"], out="results")
    run.estimates                       # one table, every model's effects
    run.comparison["participant"]       # LOO comparison of the visit-score models
    run.report                          # path of report.html

    deptrial.api.sensitivity("results/mmrm/idata.nc")   # estimands under other assumptions, as tables

fit.py and diagnose.py are thin command lines over `fit_trial` and `rediagnose`. Everything the
data could refuse is refused before the first fit (bad data, a model the data cannot support, a
likelihood the model does not have, a bad ice.csv, an existing output folder). The results folder is
written atomically: on failure nothing is left at `out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from data import DatasetError, changes_of, load_dataset, meta_of
from data.atomic import OutputBusy, locked_output, output_lock
from data.ice import ICE_FILE, IceTable, check_ice, load_ice
from diagnostics.convergence import Verdict, one_chain_quiet, verdict
from diagnostics.estimates import format_estimates, model_estimates
from diagnostics.ppc import REMISSION_CUTOFF
from diagnostics.run import (
    REFIT_MIN_DRAWS,
    RunDiagnostics,
    SensitivityOptions,
    check_sensitivity_options,
    diagnose_model,
    diagnose_run,
    load_run,
    model_sensitivity,
    saved_answers,
    saved_names,
    saved_sensitivity,
    score_model,
    write_outputs,
)
from diagnostics.sensitivity import DECISION_THRESHOLD
from diagnostics.summary import answer, baseline_mean, observed_means
from inference.idata_io import provenance, stamp, versions
from inference.jobs import WorkerFailed, default_jobs, fit_models
from inference.sampling import SamplerSettings
from inference.storage import DATA_GROUP, STORAGE, build_arguments, load_fit, save_fit, saved_dataset
from models import REGISTRY, ModelDataError, build_design, get
from models.design import TrialDesign
from models.effects import DEFAULT_MCID
from models.prior_file import PriorFile, model_priors
from models.priors import check as check_prior
from models.priors import resolve, to_json
from planning.params import design_constants

DEFAULT_MODELS = ("null", "treatment", "headline")  # the main job's comparison
MIN_DRAWS_PER_CHAIN = 10  # ESS, MCSE and split R-hat need at least 4 draws per chain, E-BFMI 3
MIN_DRAWS_TOTAL = 40  # PSIS-LOO fits its Pareto tail to the largest min(20%, 3 sqrt(S)) of S ratios: at least 8 of them


class SamplingFailed(RuntimeError):
    """A model's sampling raised (e.g. no chain could initialise): reported with advice."""

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


class FinishingFailed(RuntimeError):
    """A model sampled but writing or checking its results failed (e.g. a full disk)."""


@dataclass
class ModelFit:
    """One model's fit: the InferenceData (as saved in out/<name>/idata.nc), its estimates, verdict and timings."""

    name: str
    idata: object
    estimates: pd.DataFrame
    verdict: Verdict
    timings: dict
    notes: dict = field(default_factory=dict)


@dataclass
class RunResult:
    """What `fit_trial` wrote into `out`, in memory."""

    out: Path
    fits: dict[str, ModelFit]
    run: dict  # the content of run.json
    diagnostics: RunDiagnostics | None = None  # PPC, LOO and comparison of the visit-score models
    report: Path | None = None

    @property
    def estimates(self) -> pd.DataFrame:
        """Every model's estimates in one table, with a 'model' column first."""
        tables = [f.estimates.assign(model=name) for name, f in self.fits.items() if not f.estimates.empty]
        if not tables:
            return pd.DataFrame()
        table = pd.concat(tables, ignore_index=True)
        return table[["model", *[c for c in table.columns if c != "model"]]]

    @property
    def comparison(self) -> dict[str, pd.DataFrame]:
        """The LOO comparison tables by level ('visit', 'participant'); empty without comparable models."""
        return dict(self.diagnostics.comparisons) if self.diagnostics is not None else {}

    @property
    def sensitivity(self) -> dict[str, dict[str, pd.DataFrame]]:
        """Per model, the sensitivity tables written with `sensitivity=True` ({} without): sensitivity, tipping_point,
        responders, prior_sensitivity, those the model supports."""
        found = self.diagnostics.sensitivity if self.diagnostics is not None else {}
        return {name: dict(s.tables) for name, s in found.items()}

    @property
    def converged(self) -> bool:
        return all(f.verdict.ok for f in self.fits.values())


def list_models() -> dict[str, str]:
    """Registered model names and their descriptions."""
    return {name: spec.description for name, spec in REGISTRY.items()}


def _dataset(data) -> tuple[xr.Dataset, str]:
    """(validated dataset, its source) from a folder path or an already loaded dataset."""
    if isinstance(data, xr.Dataset):
        return data, str(data.attrs.get("source", ""))
    return load_dataset(data), str(data)


def model_specs(models: Sequence[str], likelihood: str) -> list:
    """The registry specs of `models` (KeyError for an unknown name, ValueError for a likelihood a model lacks)."""
    specs = [get(n) for n in dict.fromkeys(models)]
    for spec in specs:
        if likelihood not in spec.likelihoods:
            raise ValueError(f"model '{spec.name}' supports likelihoods {spec.likelihoods}, not '{likelihood}'")
    return specs


def fit_trial(
    data,
    models: Sequence[str] = DEFAULT_MODELS,
    settings: SamplerSettings | None = None,
    *,
    out: str | Path = "results",
    likelihood: str = "normal",
    mcid: float = DEFAULT_MCID,
    remission_cutoff: float = REMISSION_CUTOFF,
    kfold: int = 0,
    jobs: int | None = None,
    force: bool = False,
    quiet: bool = True,
    echo: Callable[[str], None] | None = None,
    priors: dict[str, dict] | str | Path | PriorFile | None = None,
    prior_preset: str | None = None,
    sensitivity: bool = False,
    ice: str | Path | IceTable | None = None,
    deltas: Sequence[float] | None = None,
    tipping_threshold: float | None = None,
) -> RunResult:
    """Fit `models` to a trial and write InferenceData, tables, the comparison and report.html into `out`.

    data      a dataset folder (docs/data.md) or a dataset returned by `load_dataset`
    models    registered model names (`list_models()`)
    settings  sampler settings (chains, draws, seed...); the same seed gives the same numbers
    kfold     refit units with high Pareto k by grouped K-fold (K >= 2; 0: no refits)
    jobs      models fitted at once, one process each (default: one per model, at most one per core)
    force     replace an existing `out`
    quiet     no progress lines on stderr
    echo      where the per-model summaries and the comparison sentences go (fit.py passes print)
    priors    per model, prior overrides: {"treatment": {"nac_change": {"params": {"sigma": 3.0}}}}
              (names from `models.get(name).default_priors(design)`; a Prior or a dict of dist/params)
              ('all': every fitted model using that prior); or a TOML prior file, as a path or as read by
              models.prior_file.read_prior_file (docs/models.md#prior-sensitivity)
    prior_preset  'sceptical' or 'enthusiastic': every fitted model's treatment-effect prior, scaled by
              `mcid`; priors named in `priors` win over it (and it over a prior file's preset key)
    sensitivity  also write, per model that supports them, the estimands under other missing-data
              assumptions (sensitivity.csv: MAR, J2R, CR, CIR and delta rows; tipping_point.csv), the responder
              and remission estimands (responders.csv, with `remission_cutoff` and the settings' seed) and the
              power-scaling prior sensitivity (prior_sensitivity.csv), and a section per model in the report
              (docs/diagnostics.md#estimands-of-the-bundled-trial); without it none of this is computed
    ice       with `sensitivity`: intercurrent events, the path of an ice.csv (data/ice.py) or an IceTable;
              default: ice.csv in the dataset folder when there is one. Validated before any fit
    deltas    with `sensitivity`: the delta rows of sensitivity.csv, outcome points (default 1/30, 1/15 and
              1/10 of the score range: 2, 4 and 6 MADRS points)
    tipping_threshold  with `sensitivity`: benefit is concluded while P(benefit) is at least this (default 0.975)

    Raises DatasetError (bad data or ice.csv), ModelDataError (data a model cannot use), KeyError (unknown
    model), ValueError (bad argument), FileExistsError / OutputBusy (output folder), SamplingFailed,
    FinishingFailed. Nothing is written at `out` unless the whole run succeeds.
    """
    settings = settings or SamplerSettings()
    out = Path(out)
    say = echo or (lambda text: None)
    log = (lambda text: None) if quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    if kfold < 0 or kfold == 1:
        raise ValueError("kfold must be 0 (no refits) or at least 2")
    if jobs is not None and jobs < 1:
        raise ValueError("jobs must be at least 1")
    check_settings(settings)
    if not sensitivity and (ice is not None or deltas is not None or tipping_threshold is not None):
        raise ValueError("ice, deltas and tipping_threshold are options of the sensitivity analyses: pass sensitivity=True "
                         "(fit.py --sensitivity)")
    if sensitivity:
        deltas, tipping_threshold = check_sensitivity_options(deltas, DECISION_THRESHOLD if tipping_threshold is None else tipping_threshold)
    specs = model_specs(models, likelihood)
    if out.exists() and not force:
        raise FileExistsError(f"output folder {out} already exists; choose another --out or pass --force to replace it")
    ds, source = _dataset(data)
    changes = changes_of(ds)
    if changes:  # what the loader accepted but altered is never silent
        print(f"data: the loader changed {len(changes)} thing(s) (saved in run.json):", file=sys.stderr)
        for change in changes:
            print(f"  - {change['text']}", file=sys.stderr)
    design = build_design(ds)
    for spec in specs:  # data a model cannot use, or priors it does not have: refused before the first fit
        spec.require(design)
    priors = model_priors(specs, design, priors, preset=prior_preset, mcid=mcid, likelihood=likelihood)
    check_priors(priors, specs, design)
    options = None
    if sensitivity:  # ice.csv is read and checked against the data here, before any fit
        options = SensitivityOptions(read_ice(ice, ds, str(ds.attrs.get("source") or source)), deltas, tipping_threshold,
                                     remission_cutoff, settings.seed)
    with locked_output(out, overwrite=force) as tmp:
        fits, run, diag, report = _run(specs, ds, design, source, changes, settings, tmp, out,
                                       likelihood=likelihood, mcid=mcid, remission_cutoff=remission_cutoff, kfold=kfold,
                                       jobs=jobs, quiet=quiet, log=log, say=say, priors=priors, sensitivity=options)
    return RunResult(out=out, fits=fits, run=run, diagnostics=diag, report=out / report.name if report is not None else None)


def read_ice(ice, ds: xr.Dataset, source: str = "") -> IceTable | None:
    """The intercurrent events for the sensitivity analyses, validated against the dataset (DatasetError).

    ice  an IceTable, the path of an ice.csv (or of a folder holding one), or None: the dataset folder's ice.csv
         (`source`) when there is one, else no table"""
    if isinstance(ice, IceTable):
        check_ice(ice, ds["participant"].values, meta_of(ds).weeks)
        return ice
    if ice is None:
        folder = Path(source) if source else None
        if folder is None or not (folder / ICE_FILE).is_file():
            return None
        return load_ice(folder / ICE_FILE, ds)
    path = Path(ice)
    if path.is_dir():
        path = path / ICE_FILE
    if not path.is_file():
        raise ValueError(f"intercurrent events: no file {path}; give the path of an ice.csv (participant_id, week, strategy; "
                         "docs/diagnostics.md#estimands-under-other-missing-data-assumptions)")
    return load_ice(path, ds)


def check_settings(settings: SamplerSettings) -> None:
    """Refuse sampler settings under which a fit could not be checked (ValueError), before any work.

    One chain is accepted: every diagnostic but R-hat is defined, and the verdict says R-hat is not
    available. Fewer draws than the diagnostics need are refused rather than failing after the fit."""
    from inference.sampling import SAMPLERS

    if settings.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{settings.sampler}'; choose from {', '.join(SAMPLERS)}")
    for name in ("chains", "cores", "prior_draws"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1 (got {getattr(settings, name)})")
    if settings.tune < 0:
        raise ValueError(f"tune must be at least 0 (got {settings.tune})")
    if not 0 < settings.target_accept < 1:
        raise ValueError(f"target_accept must be between 0 and 1 (got {settings.target_accept})")
    if settings.draws < MIN_DRAWS_PER_CHAIN:
        raise ValueError(
            f"draws = {settings.draws} per chain is too few to check the fit: effective sample size, MCSE and R-hat need "
            f"at least {MIN_DRAWS_PER_CHAIN} draws per chain; use --draws {MIN_DRAWS_PER_CHAIN} or more (1000 or more for results)"
        )
    if settings.draws * settings.chains < MIN_DRAWS_TOTAL:
        raise ValueError(
            f"{settings.chains} chain(s) x {settings.draws} draws = {settings.draws * settings.chains} draws in all is too few for "
            f"leave-one-out (PSIS fits a tail to the largest importance ratios); use at least {MIN_DRAWS_TOTAL} draws in all"
        )


def check_priors(priors: dict | None, specs: list, design: TrialDesign) -> None:
    """Refuse overrides for a model not being fitted, or of a prior the model does not have (ValueError)."""
    names = {s.name: s for s in specs}
    for name, overrides in (priors or {}).items():
        if name not in names:
            raise ValueError(f"priors given for model '{name}', which is not among the models fitted ({', '.join(names)})")
        try:
            resolved = resolve(names[name].default_priors(design), overrides)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"priors for model '{name}': {exc.args[0] if exc.args else exc}") from exc
        for key in overrides:
            try:
                check_prior(key, resolved[key])
            except ValueError as exc:
                raise ValueError(f"priors for model '{name}': {exc}") from exc


def finish_fit(name: str, idata, built, *, out: str, data_source: str, likelihood: str, settings: SamplerSettings,
               info: dict, changes: list, mcid: float, remission_cutoff: float, sensitivity: SensitivityOptions | None = None) -> dict:
    """Everything one model's fit needs before the comparison, run in its worker process beside the
    other fits (or in this process with jobs=1): the provenance stamp, the convergence verdict, the
    estimates, the files in out/<name>/, for visit-score models the PPC, LOO and figures, and with
    `sensitivity` the model's sensitivity analyses (written with the report's files)."""
    t0 = time.perf_counter()
    spec, design = get(name), built.design
    stamp(
        idata,
        model=name,
        likelihood=likelihood,
        priors=to_json(built.priors),
        seed=settings.seed,
        data_checksum=design.checksum,
        data_source=data_source,
        settings=settings.__dict__,
        data_summary=info,
        data_notes=built.notes,
        data_changes=changes,
        design_constants=design_constants(design),  # time coding and marker scaling, for plan.py
    )
    tv = time.perf_counter()
    check = verdict(idata)
    verdict_s = time.perf_counter() - tv
    table = model_estimates(idata, spec, design, mcid)
    folder = Path(out) / name
    folder.mkdir()
    written = save_fit(idata, folder / "idata.nc", dataset=design.dataset)
    check.table.to_csv(folder / "convergence.csv")
    summary_table(idata).to_csv(folder / "summary.csv")
    table.to_csv(folder / "estimates.csv", index=False)
    (folder / "convergence.txt").write_text(check.text() + "\n")
    t1 = time.perf_counter()
    diagnosed = None
    if spec.comparable:  # its PPC, LOO and figures, for the report
        labels = (design.meta.control_arm, design.meta.treatment_arm)
        diagnosed = diagnose_model(name, idata, table, design.treated, labels, remission_cutoff, spec.description, check=check)
    elif spec.compared and "y_participant" in idata.log_likelihood:  # the MMRM: in the comparison on the integrated densities
        diagnosed = score_model(name, idata, table, spec.description, check=check)
    t2 = time.perf_counter()
    sens = model_sensitivity(name, idata, design, sensitivity) if sensitivity is not None else None
    return {"check": check, "table": table, "notes": built.notes, "diagnostics": diagnosed, "sensitivity": sens,
            "finish_s": t1 - t0, "diagnose_s": t2 - t1, "verdict_s": verdict_s,
            **(diagnosed.timings if diagnosed is not None else {}),
            **({"sensitivity_s": time.perf_counter() - t2} if sens is not None else {}),
            "idata_bytes": written["bytes"], "write_s": written["write_s"]}


def _run(specs, ds, design, source, changes, settings, tmp: Path, out: Path, *, likelihood, mcid, remission_cutoff, kfold,
         jobs, quiet, log, say, priors=None, sensitivity: SensitivityOptions | None = None):
    fits: dict[str, ModelFit] = {}
    sensitivities = {}
    diagnosed, diagnose_s = {}, 0.0  # per-model diagnostics of the visit-score fits
    run = {"data": source, "checksum": design.checksum, "data_changes": changes, "models": {}, "settings": settings.__dict__,
           "versions": versions(), "storage": STORAGE}
    info = data_summary(design)
    log(info_text(info))
    names = [s.name for s in specs]
    jobs = jobs if jobs is not None else default_jobs(len(names))
    if jobs > 1 and len(names) > 1:
        log(f"\nfitting {len(names)} models, {jobs} at a time (one process each; --jobs 1 fits them in turn)")
    finish = partial(
        finish_fit, out=str(tmp), data_source=source, likelihood=likelihood, settings=settings, info=info,
        changes=changes, mcid=mcid, remission_cutoff=remission_cutoff, sensitivity=sensitivity,
    )
    # models with biomarkers (the largest) first, so the longest compile starts at once and the small ones fill the other core
    order = list(REGISTRY)
    submit = sorted(names, key=lambda n: (not get(n).needs, -order.index(n)))
    stream = fit_models(
        names, ds, likelihood, settings, jobs, quiet=quiet, submit_order=submit, after=finish,
        announce=lambda n: log(f"\n== {n}: {get(n).description}"), priors=priors,
    )
    while True:
        try:
            name, idata, timings, done = next(stream)
        except StopIteration:
            break
        except WorkerFailed as exc:  # the sampler's failure becomes advice, not a traceback
            if exc.stage == "after":
                raise FinishingFailed(f"saving or checking the fit of model '{exc.model}' failed: {exc.cause}") from exc
            raise SamplingFailed(exc.model, exc.cause) from exc
        check, table, notes = done["check"], done["table"], done["notes"]
        if notes.get("text"):
            log(f"  {notes['text']}")
        wall = timings.get("worker_wall_s", timings.get("total_s", 0.0))  # fit only; finishing is timed apart
        timings.update(wall_s=wall, **{k: done[k] for k in ("finish_s", "diagnose_s", "write_s", "verdict_s", "ppc_s", "loo_s", "figures_s",
                                                             "sensitivity_s") if k in done})
        run["models"][name] = {"converged": check.ok, "timings": timings, "divergences": check.divergences, "idata_bytes": done["idata_bytes"]}
        if notes:
            run["models"][name]["data_notes"] = notes
        fits[name] = ModelFit(name, idata, table, check, timings, notes)
        if done["diagnostics"] is not None:
            diagnosed[name] = done["diagnostics"]
            diagnose_s += done["diagnose_s"]
        say(f"\n{name}: estimates ({design.meta.outcome_label} points unless a row says otherwise; lower scores are better)")
        say(format_estimates(table))
        say(check.text())
        if done.get("sensitivity") is not None:
            sensitivities[name] = done["sensitivity"]
            say(sensitivity_text(done["sensitivity"]))
        say(f"({timings['wall_s']:.1f} s: compile {timings.get('compile_s', 0):.1f}, sampling {timings['sample_s']:.1f})")
    # the report's checks (trajectory PPC, visit/participant LOO) need visit-score outcomes; models of other
    # outcomes (MMRM change from baseline, biomarker change, mediation) keep their convergence.txt and estimates.csv
    skipped = [n for n in fits if n not in diagnosed]
    if skipped:
        run["not_in_report"] = skipped
        say(f"note: {', '.join(skipped)}: outcome is not the visit scores (y), so no trajectory checks or LOO comparison "
            "in the report (their answers lead it)")
    scored_only = [n for n, m in diagnosed.items() if m.ppc is None]
    if scored_only:
        say(f"note: {', '.join(scored_only)}: change from baseline, compared with the trajectory models on the post-baseline "
            "scores given the baseline (no checks of the scores)")
    diag = report = None
    if fits:
        t0 = time.perf_counter()
        labels = (design.meta.control_arm, design.meta.treatment_arm)
        observed = observed_means(ds, labels)
        baseline = baseline_mean(ds)
        answers = {n: answer(n, f.idata, f.estimates, labels, baseline, design.meta.outcome_label, get(n).description) for n, f in fits.items()}
        builders = {n: partial(get(n).build, priors=(priors or {}).get(n), likelihood=likelihood) for n in diagnosed}
        diag = diagnose_run(
            {n: fits[n].idata for n in diagnosed},
            {n: fits[n].estimates for n in diagnosed},
            design=design,
            builders=builders,
            settings=settings,
            kfold=kfold,
            remission_cutoff=remission_cutoff,
            labels=(design.meta.control_arm, design.meta.treatment_arm),
            descriptions={n: get(n).description for n in diagnosed},
            title=design.meta.title or source,
            log=log,
            refit_min_draws=REFIT_MIN_DRAWS,
            precomputed=diagnosed,
            answers=answers,
            observed=observed,
            outcome=design.meta.outcome_label,
            data_summary=info,
        )
        diag.sensitivity = sensitivities
        report = write_outputs(diag, tmp)
        say("")
        for level, sentence in diag.plain_language.items():
            say(f"comparison ({level} level): {sentence}")
        for note in diag.comparison_notes:
            say(f"note: {note}")
        say(f"report: {out / report.name}  ({time.perf_counter() - t0:.1f} s for diagnostics, comparison and report)")
        run["diagnostics"] = {
            "comparison": {level: table.reset_index().to_dict(orient="records") for level, table in diag.comparisons.items()},
            "plain_language": diag.plain_language,
            "notes": diag.comparison_notes,
            "ppc_flags": {n: m.ppc.flags() for n, m in diag.models.items() if m.ppc is not None},
            "wall_s": time.perf_counter() - t0,
            "per_model_s": diagnose_s,
        }
    if sensitivity is not None:
        run["sensitivity"] = sensitivity_record(sensitivity, sensitivities)
    (tmp / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    return fits, run, diag, report


def sensitivity_record(options: SensitivityOptions, results: dict) -> dict:
    """What run.json records of the sensitivity analyses: the options, and per model the tables written and the notes."""
    ice = options.ice
    return {
        "ice": {"source": ice.source, "participants": len(ice)} if ice is not None else None,
        "deltas": list(options.deltas) if options.deltas is not None else "default",
        "tipping_threshold": options.threshold,
        "remission_cutoff": options.remission_cutoff,
        "seed": options.seed,
        "models": {n: {"tables": [f"{t}.csv" for t in r.tables], "not_supported": r.notes, "timings": r.timings} for n, r in results.items()},
    }


def sensitivity_text(result) -> str:
    """One model's sensitivity analyses in a few lines, for the console."""
    lines = []
    table = result.tables.get("sensitivity")
    if table is not None:
        end = table[table["week"] == result.end_week]
        parts = [f"{r.strategy} {r.mean:.2f} (P(benefit) {r.p_below_0:.2f})" for r in end.itertuples(index=False)]
        lines.append(f"sensitivity at week {result.end_week}: " + "; ".join(parts))
        lines.append(f"tipping point: {result.tipping_message}")
    prior = result.tables.get("prior_sensitivity")
    if prior is not None and len(prior) and prior["prior_sensitive"].any():
        lines.append("prior-sensitive: " + ", ".join(f"{r.effect} ({r.diagnosis})" for r in prior[prior["prior_sensitive"]].itertuples(index=False)))
    for table_name, why in result.notes.items():
        if table_name != "tipping_point":
            lines.append(f"no {table_name}.csv: {why}")
    return "\n".join(lines)


def summary_table(idata):
    import arviz as az

    names = [v for v in idata.posterior.data_vars if v not in ("participant_raw", "participant_effects") and not v.startswith("marker_missing") and not v.startswith("marker_censored")]
    with one_chain_quiet():
        return az.summary(idata, var_names=names, hdi_prob=0.94)


def data_summary(design: TrialDesign) -> dict:

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


# ---------------------------------------------------------------- saved fits


def refit_context(idatas: dict, seed: int | None = None):
    """(design, builders, settings) to refit the saved models, from the data they were fitted to (ValueError if unavailable)."""
    import dataclasses

    first = next(iter(idatas.values()))
    prov = provenance(first)
    if DATA_GROUP in first.groups():  # the dataset saved with the fit: no need for the original folder
        ds = saved_dataset(first)
    else:
        source = prov.get("data_source")
        if not source or not Path(source).is_dir():
            raise ValueError(f"cannot refit: the dataset the fits were made from ({source}) is not available")
        try:
            ds = load_dataset(source)
        except DatasetError as exc:
            raise ValueError(f"cannot refit: {exc}") from exc
    design = build_design(ds)
    if design.checksum != prov.get("data_checksum"):
        raise ValueError("cannot refit: the dataset differs from the one the fits were made from (checksum differs)")
    builders = {}
    for name, idata in idatas.items():
        p = provenance(idata)
        try:
            spec = get(str(p.get("model", name)))
        except KeyError as exc:
            raise ValueError(f"cannot refit '{name}': {exc.args[0]}") from exc
        builders[name] = partial(spec.build, **build_arguments(idata, spec, design))  # its priors, likelihood and covariates
    saved = prov.get("settings") or {}
    fields = {f.name for f in dataclasses.fields(SamplerSettings)}
    settings = SamplerSettings(**{k: v for k, v in saved.items() if k in fields})
    if seed is not None:
        settings = dataclasses.replace(settings, seed=seed)
    return design, builders, settings


def rediagnose(results: str | Path, *, kfold: int = 0, refit_levels: Sequence[str] = ("participant",), seed: int | None = None,
               remission_cutoff: float = REMISSION_CUTOFF, quiet: bool = True, sensitivity: bool = False,
               ice: str | Path | IceTable | None = None, deltas: Sequence[float] | None = None,
               tipping_threshold: float | None = None) -> tuple[RunDiagnostics, Path]:
    """Recompute PPC, LOO, the comparison and report.html from a saved results folder (no refit unless kfold >= 2).

    sensitivity  also (re)compute every saved model's sensitivity analyses (as `fit_trial(..., sensitivity=True)`;
                 `ice` defaults to ice.csv in the folder of the dataset the fits were made from, when it is there;
                 `seed`, else each fit's own seed, seeds the responder imputations). Without it, sensitivity tables
                 already in the folder are shown in the report as they are.

    Raises FileNotFoundError / ValueError (bad folder, data unavailable for refits, bad ice.csv or options) and OutputBusy.
    Returns the diagnostics and the report's path.
    """
    if kfold < 0 or kfold == 1:
        raise ValueError("kfold must be 0 (no refits) or at least 2")
    if not sensitivity and (ice is not None or deltas is not None or tipping_threshold is not None):
        raise ValueError("ice, deltas and tipping_threshold are options of the sensitivity analyses: pass sensitivity=True "
                         "(diagnose.py --sensitivity)")
    results = Path(results)
    options = saved_sensitivity_options(results, ice, deltas, tipping_threshold, remission_cutoff, seed) if sensitivity else None
    idatas, estimates = load_run(results)
    design = builders = settings = None
    if kfold and not idatas:
        raise ValueError(f"--kfold refits the fits of the visit scores, and {results} holds none (only models of other outcomes): "
                         "run diagnose.py without --kfold")
    if kfold:
        design, builders, settings = refit_context(idatas, seed)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    saved = saved_answers(results, loaded=idatas)
    if options is not None:
        sens = saved_fits_sensitivity(results, idatas, options, log)
    else:
        sens = saved_sensitivity(results, idatas)
    run = diagnose_run(idatas, estimates, design=design, builders=builders, settings=settings, kfold=kfold,
                       remedy_levels=tuple(refit_levels), remission_cutoff=remission_cutoff, log=log,
                       answers=saved.answers or None, observed=saved.observed, labels=saved.labels, outcome=saved.outcome,
                       title=saved.title)
    run.sensitivity = sens
    with output_lock(results):  # never interleave with a fit.py --force replacing this folder
        report = write_outputs(run, results)
    return run, report


def saved_sensitivity_options(results: Path, ice, deltas, tipping_threshold, remission_cutoff, seed) -> SensitivityOptions:
    """The sensitivity options for a saved results folder, everything checked before any work (ValueError, DatasetError)."""
    deltas, threshold = check_sensitivity_options(deltas, DECISION_THRESHOLD if tipping_threshold is None else tipping_threshold)
    names = saved_names(results) if results.is_dir() else []
    if not names:
        raise FileNotFoundError(f"{results} holds no fitted model (no <model>/idata.nc): run fit.py first")
    first = load_fit(results / names[0] / "idata.nc", complete=False)
    ds = saved_dataset(first)
    source = str(ds.attrs.get("source") or provenance(first).get("data_source") or "")  # the folder the data were read from
    table = read_ice(ice, ds, source)
    return SensitivityOptions(table, deltas, threshold, remission_cutoff, seed)


def saved_fits_sensitivity(results: Path, loaded: dict, options: SensitivityOptions, log) -> dict:
    """Every saved model's sensitivity analyses; fits not loaded yet (the biomarker models) are read back whole."""
    out, designs = {}, {}
    for name in saved_names(results):
        idata = loaded.get(name)
        if idata is None:
            idata = load_fit(results / name / "idata.nc")
        checksum = str(provenance(idata).get("data_checksum", ""))
        if checksum not in designs:
            designs[checksum] = build_design(saved_dataset(idata))
        log(f"sensitivity: {name}")
        out[name] = model_sensitivity(name, idata, designs[checksum], options)
    return out


def sensitivity(fit, design=None, *, ice: str | Path | IceTable | None = None, deltas: Sequence[float] | None = None,
                tipping_threshold: float = DECISION_THRESHOLD, remission_cutoff: float = REMISSION_CUTOFF,
                seed: int | None = None) -> dict[str, pd.DataFrame]:
    """One fit's sensitivity analyses as tables, for notebooks: what `fit.py --sensitivity` writes in <out>/<model>/.

    fit      a fit (InferenceData, whole: as fit_trial returns it or deptrial.load_fit reads it) or the path of an idata.nc
    design   the TrialDesign it was fitted to, a dataset (folder or `load_dataset`'s output), or None: the dataset
             saved in the fit
    ice      an ice.csv path or an IceTable (None: no intercurrent events table)
    deltas, tipping_threshold, remission_cutoff, seed   as for `fit_trial` (seed None: the fit's own seed)

    Returns {"sensitivity", "tipping_point", "responders", "prior_sensitivity": DataFrame} for the tables the
    fit's model supports, and "notes": one row (table, note) per table it does not support, with the reason.
    """
    idata = load_fit(fit) if isinstance(fit, (str, Path)) else fit
    if design is None:
        ds = saved_dataset(idata)
        design = build_design(ds)
    elif isinstance(design, TrialDesign):
        ds = design.dataset
    else:
        ds, _ = _dataset(design)
        design = build_design(ds)
    deltas, threshold = check_sensitivity_options(deltas, tipping_threshold)
    if ice is not None and ds is None:
        raise ValueError("reading ice.csv needs the design's dataset: pass design=models.build_design(deptrial.load_dataset(folder))")
    table = read_ice(ice, ds) if ice is not None else None
    name = str(provenance(idata).get("model") or "model")
    result = model_sensitivity(name, idata, design, SensitivityOptions(table, deltas, threshold, remission_cutoff, seed))
    return {**result.tables, "notes": pd.DataFrame({"table": list(result.notes), "note": list(result.notes.values())})}


# ---------------------------------------------------------------- command-line options shared by fit.py and diagnose.py


def add_sensitivity_arguments(ap: argparse.ArgumentParser) -> None:
    """--sensitivity and its options (fit.py and diagnose.py)."""
    ap.add_argument("--sensitivity", action="store_true", help="also write, per model that supports them, sensitivity.csv (the NAC effect "
                    "under MAR, J2R, CR, CIR and delta adjustment), tipping_point.csv, responders.csv, prior_sensitivity.csv and a "
                    "section in the report (docs/diagnostics.md#estimands-of-the-bundled-trial)")
    ap.add_argument("--ice", type=Path, default=None, metavar="FILE", help="with --sensitivity: intercurrent events, ice.csv "
                    "(participant_id, week, strategy); default: ice.csv in the dataset folder when there is one")
    ap.add_argument("--deltas", type=_deltas, default=None, metavar="D1,D2,...", help="with --sensitivity: delta rows of "
                    "sensitivity.csv, outcome points added to the imputed scores after dropout (default 1/30, 1/15, 1/10 of the "
                    "score range: 2,4,6 on MADRS)")
    ap.add_argument("--tipping-threshold", type=float, default=None, metavar="P", help="with --sensitivity: benefit is concluded "
                    f"while P(benefit) is at least this (default {DECISION_THRESHOLD})")


def _deltas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers, e.g. 2,4,6") from None
    if not values or any(not x >= 0 or x == float("inf") for x in values):
        raise argparse.ArgumentTypeError(f"'{text}': give finite outcome points, at least 0, e.g. 2,4,6")
    return values


def check_sensitivity_arguments(ap: argparse.ArgumentParser, args) -> None:
    if not args.sensitivity:
        given = [name for name, value in (("--ice", args.ice), ("--deltas", args.deltas), ("--tipping-threshold", args.tipping_threshold))
                 if value is not None]
        if given:
            ap.error(f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --sensitivity")
    if args.tipping_threshold is not None and not 0.5 <= args.tipping_threshold < 1:
        ap.error("--tipping-threshold is a posterior probability of benefit in [0.5, 1), e.g. 0.975")


__all__ = [
    "DEFAULT_MODELS", "FinishingFailed", "ModelDataError", "ModelFit", "OutputBusy", "RunResult", "SamplingFailed",
    "fit_trial", "list_models", "rediagnose", "sensitivity",
]
