"""The Python entry points: fit a trial's models and write everything `python fit.py` writes; re-diagnose saved fits;
one fit's sensitivity analyses in a notebook.

    import deptrial
    run = deptrial.fit_trial(deptrial.load_dataset(deptrial.DEFAULT_DATASET), ["null", "treatment"], out="results")
    run.estimates                       # one table, every model's effects (each active arm's rows)
    run.contrasts                       # per-arm means, every arm vs control, contrasts asked for, P(best)
    run.comparison["participant"]       # LOO comparison of the visit-score models
    run.report                          # path of report.html

    deptrial.api.sensitivity("results/mmrm/idata.nc")   # estimands under other assumptions, as tables
    trial = deptrial.from_adam("adsl.xpt", "adqs.xpt", "HAMD17", reference="Placebo")   # CDISC ADaM datasets (docs/adam.md)
    deptrial.api.contrast_table("results/mmrm/idata.nc", ["high - low"])   # contrasts.csv of a fit, with other contrasts

fit.py and diagnose.py are thin command lines over `fit_trial` and `rediagnose`. Everything the
data could refuse is refused before the first fit (bad data, a model the data cannot support, a
likelihood the model does not have, a bad ice.csv, an existing output folder: deptrial.preflight).
Once sampling has started, a failure raises RunFailed (deptrial.errors) naming the stage that failed.
The results folder is written atomically: on failure nothing is left at `out`.

The work itself is in deptrial.orchestrate, what a run prints in deptrial.console, the command-line
options in deptrial.cli; their public names are importable from here too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data import DatasetError, changes_of, load_dataset  # noqa: F401 (DatasetError, load_dataset: re-exported)
from data.adam import AdamOptions, load_adam
from data.atomic import OutputBusy, locked_output
from data.historical import HistoricalControls, read_historical_source
from data.ice import IceTable
from diagnostics.borrowing import prepare as prepare_borrowing
from diagnostics.borrowing import with_control_prior
from diagnostics.ppc import REMISSION_CUTOFF
from diagnostics.run import RunDiagnostics
from diagnostics.saved import saved_names
from diagnostics.sensitivity import DECISION_THRESHOLD
from diagnostics.sensitivity_analyses import SensitivityOptions, check_sensitivity_options, check_sensitivity_weeks, model_sensitivity
from inference.idata_io import provenance
from inference.sampling import SamplerSettings
from inference.storage import load_fit, saved_dataset
from maths.map_prior import ROBUST_WEIGHT
from models import REGISTRY, ModelDataError, build_design
from models.design import TrialDesign
from models.effects import DEFAULT_MCID
from models.prior_file import PriorFile, model_priors

from . import orchestrate
from .cli import add_sensitivity_arguments, check_sensitivity_arguments  # noqa: F401 (re-exported)
from .console import data_summary, info_text, sensitivity_text, summary_table  # noqa: F401 (re-exported)
from .errors import FinishingFailed, RunFailed, SamplingFailed
from .orchestrate import finish_fit, refit_context, saved_fits_sensitivity, sensitivity_record  # noqa: F401 (re-exported)
from .preflight import (  # noqa: F401 (MIN_DRAWS_PER_CHAIN, MIN_DRAWS_TOTAL: re-exported)
    MIN_DRAWS_PER_CHAIN,
    MIN_DRAWS_TOTAL,
    check_contrasts,
    check_priors,
    check_settings,
    dataset_of,
    model_specs,
    read_ice,
    saved_contrasts,
    saved_sensitivity_options,
)
from .results import ModelFit, RunResult

DEFAULT_MODELS = ("null", "treatment", "headline")  # the main job's comparison
WEEKS_NAMES = {"weeks": "--sensitivity-weeks / sensitivity_weeks"}  # checked against the data here, for both spellings


def list_models() -> dict[str, str]:
    """Registered model names and their descriptions."""
    return {name: spec.description for name, spec in REGISTRY.items()}


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
    contrasts: Sequence[str] | str | None = None,
    sensitivity_weeks: Sequence[int] | None = None,
    historical_control: str | Path | Sequence[str | Path] | HistoricalControls | None = None,
    map_robust_weight: float = ROBUST_WEIGHT,
    map_tau_scale: float | None = None,
) -> RunResult:
    """Fit `models` to a trial and write InferenceData, tables, the comparison and report.html into `out`.

    data      a dataset folder (docs/data.md), a dataset returned by `load_dataset` or `from_adam`, or the AdamOptions of
              CDISC ADaM datasets (data.adam, docs/adam.md): read before any fit; with `sensitivity` and a strategy map
              (ice_strategy), their intercurrent events are the default `ice`
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
    sensitivity_weeks  with `sensitivity`: the post-baseline scheduled visits the analyses report (sensitivity.csv's rows,
              a tipping point per active arm and week, the report, the submission sensitivity table), e.g. (12, 16);
              None: sensitivity.csv at every post-baseline week, the rest at the end of treatment. Checked against the
              trial's schedule before any fit (ValueError listing the valid weeks)
    contrasts  linear contrasts of the arm means to add to each model's contrasts.csv, as text: "high - low",
              "pooled active - placebo" (active arms weighted by their size), "mean active - placebo" (equally),
              "0.5*low + 0.5*high - placebo", "dose trend" (needs [arms.dose]); arm labels as in dataset.toml.
              Every model with per-arm means by week writes contrasts.csv (per-arm mean change from baseline, each
              active arm - control, these contrasts, the dose trend when doses are declared, P(each arm is best) at
              the end of treatment) whether or not contrasts are given (docs/diagnostics.md#contrasts-between-arms)
    historical_control  past trials' control arms: a historical.csv (columns study, n, mean, sd: the control arm's mean
              change from baseline at the primary visit and its SD), two or more trial folders in the project's format
              (their control arms' observed change at their end of treatment), or HistoricalControls. Their (robust)
              MAP prior goes on the control arm's mean change at the end of treatment of the MMRM and the trajectory
              models (every model fitted must be one of them); map_prior.json and the report's section give the prior, its
              ESS, the prior-data conflict check and each model's posterior (docs/models.md#borrowing-from-past-trials-map-priors).
              Read, checked and fitted before any model is
    map_robust_weight  the weight of the MAP prior's vague component (0: no robustification; default 0.2)
    map_tau_scale  the HalfNormal scale of the between-trial SD tau (default: half the unit SD of the past trials)

    Raises, before any fit: DatasetError (bad data or ice.csv), ModelDataError (data a model cannot use), KeyError
    (unknown model), ValueError (bad argument; diagnostics.contrasts.ContrastError for a contrast naming an arm the
    trial does not have, or whose weights do not make a difference of means), FileExistsError / OutputBusy (output folder). Once sampling has
    started: RunFailed naming the stage that failed (SamplingFailed, FinishingFailed for a model's own steps), its
    `kept` saying what is left at `out`. Nothing is written at `out` unless the whole run succeeds.
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
    deltas, tipping_threshold = check_sensitivity_options(deltas, tipping_threshold, sensitivity=sensitivity, ice=ice,
                                                          weeks=sensitivity_weeks)
    specs = model_specs(models, likelihood)
    if out.exists() and not force:
        raise FileExistsError(f"output folder {out} already exists; choose another --out or pass --force to replace it")
    if isinstance(data, AdamOptions):  # converted to the folder format and loaded by the same loader
        data, adam_ice = load_adam(data, intercurrent_events=sensitivity)
        ice = adam_ice if ice is None else ice
    ds, source = dataset_of(data)
    changes = changes_of(ds)
    if changes:  # what the loader accepted but altered is never silent
        print(f"data: the loader changed {len(changes)} thing(s) (saved in run.json):", file=sys.stderr)
        for change in changes:
            print(f"  - {change['text']}", file=sys.stderr)
    design = build_design(ds)
    weeks = check_sensitivity_weeks(sensitivity_weeks, design.weeks, str(ds.attrs.get("source") or source), WEEKS_NAMES)
    for spec in specs:  # data a model cannot use, or priors it does not have: refused before the first fit
        spec.require(design)
    priors = model_priors(specs, design, priors, preset=prior_preset, mcid=mcid, likelihood=likelihood)
    check_priors(priors, specs, design)
    parsed = check_contrasts(contrasts, design)
    borrowing = None
    if historical_control is not None:  # past trials read and their MAP prior fitted before any fit
        if not 0 <= map_robust_weight < 1:
            raise ValueError(f"map_robust_weight (--map-robust-weight) must be in [0, 1), got {map_robust_weight}")
        if map_tau_scale is not None and not map_tau_scale > 0:
            raise ValueError(f"map_tau_scale (--map-tau-scale) must be positive, got {map_tau_scale}")
        past = historical_control if isinstance(historical_control, HistoricalControls) else read_historical_source(
            historical_control, (design.meta.score_min, design.meta.score_max))
        borrowing = prepare_borrowing(past, ds, [s.name for s in specs], robust_weight=map_robust_weight, tau_scale=map_tau_scale,
                                      seed=settings.seed)
        priors = with_control_prior(priors, borrowing)
    options = None
    if sensitivity:  # ice.csv is read and checked against the data here, before any fit
        options = SensitivityOptions(read_ice(ice, ds, str(ds.attrs.get("source") or source)), deltas, tipping_threshold,
                                     remission_cutoff, settings.seed, weeks)
    kept = f"{out} still holds the previous results (nothing was replaced)" if out.exists() else f"nothing was written to {out}"
    finished = False
    try:
        with locked_output(out, overwrite=force) as tmp:
            fits, run, diag, report = orchestrate.run_models(
                specs, ds, design, source, changes, settings, tmp, out, likelihood=likelihood, mcid=mcid,
                remission_cutoff=remission_cutoff, kfold=kfold, jobs=jobs, quiet=quiet, log=log, say=say, priors=priors,
                sensitivity=options, contrasts=parsed, borrowing=borrowing)
            finished = True
    except RunFailed as exc:  # the temporary folder is gone: say what is at `out`
        exc.kept = kept
        raise
    except Exception as exc:
        if not finished:  # refused before any fit (output folder exists or is locked)
            raise
        raise RunFailed(f"moving the results into place at {out}", cause=exc,
                        kept=f"the results of this run were not kept; previous results at {out}, if any, are kept (a next run "
                             f"writing {out} puts them back if they had been moved aside)") from exc
    return RunResult(out=out, fits=fits, run=run, diagnostics=diag, report=out / report.name if report is not None else None)


def rediagnose(results: str | Path, *, kfold: int = 0, refit_levels: Sequence[str] = ("participant",), seed: int | None = None,
               remission_cutoff: float = REMISSION_CUTOFF, quiet: bool = True, sensitivity: bool = False,
               ice: str | Path | IceTable | None = None, deltas: Sequence[float] | None = None,
               tipping_threshold: float | None = None, contrasts: Sequence[str] | str | None = None,
               adam: AdamOptions | None = None, sensitivity_weeks: Sequence[int] | None = None) -> tuple[RunDiagnostics, Path]:
    """Recompute PPC, LOO, the comparison and report.html from a saved results folder (no refit unless kfold >= 2).

    sensitivity  also (re)compute every saved model's sensitivity analyses (as `fit_trial(..., sensitivity=True)`;
                 `ice` defaults to ice.csv in the folder of the dataset the fits were made from, when it is there;
                 `seed`, else each fit's own seed, seeds the responder imputations). Without it, sensitivity tables
                 already in the folder are shown in the report as they are.
    adam         with `sensitivity`, instead of `ice`: the intercurrent events of CDISC ADaM datasets (their ADSL's EOTSTT,
                 DCTREAS and TRTEDT with the options' ice_strategy; docs/adam.md), whose analysed participants, arms and
                 scores must be those of the saved fits (ValueError otherwise)
    contrasts    recompute every saved model's contrasts.csv with these contrasts (as for `fit_trial`); None: the
                 contrasts.csv files in the folder are shown as they are.
    sensitivity_weeks  with `sensitivity`: the weeks the analyses report (as for `fit_trial`), checked against the saved
                 trial's schedule before any work.

    Raises, before any work: FileNotFoundError / ValueError (bad folder, data unavailable for refits, bad ice.csv or
    options) and OutputBusy; RunFailed naming the stage if diagnosing or writing fails (the saved fits are never changed).
    Returns the diagnostics and the report's path.
    """
    if kfold < 0 or kfold == 1:
        raise ValueError("kfold must be 0 (no refits) or at least 2")
    deltas, threshold = check_sensitivity_options(deltas, tipping_threshold, sensitivity=sensitivity, ice=ice,
                                                  weeks=sensitivity_weeks)
    results = Path(results)
    if adam is not None:
        if not sensitivity or ice is not None:
            raise ValueError("adam gives the intercurrent events of the sensitivity analyses: pass it with sensitivity=True "
                             "and without ice")
        ice = adam_events(results, adam)
    options = (saved_sensitivity_options(results, ice, deltas, threshold, remission_cutoff, seed, sensitivity_weeks, WEEKS_NAMES)
               if sensitivity else None)
    parsed = saved_contrasts(results, contrasts) if contrasts is not None else None
    return orchestrate.rediagnose_folder(results, kfold=kfold, refit_levels=refit_levels, seed=seed, remission_cutoff=remission_cutoff,
                                         quiet=quiet, options=options, contrasts=parsed)


def from_adam(adsl: str | Path, bds: str | Path, param: str | None = None, *, with_ice: bool = False,
              max_file_bytes: int | None = None, **options):
    """CDISC ADaM datasets as the project's validated dataset (what `load_dataset` returns for a folder), for `fit_trial`.

    adsl, bds  the subject-level dataset and the BDS dataset of the outcome (.xpt, .sas7bdat, .csv or .parquet)
    param      the outcome's PARAMCD (default: the BDS's only parameter)
    options    the other fields of data.adam.AdamOptions: reference, arms, doses, scale=(min, max), markers (the ADLB
               path) with marker_params (its PARAMCDs), covariates, keep, population_flag, variables (role -> variable),
               visit_map, treatment_end, ice_strategy ({"ADVERSE EVENT": "J2R", "*": "MAR"}), title; an [adam] table in a
               dataset.toml beside the ADSL file gives the ones not passed (docs/adam.md)
    with_ice   return (dataset, IceTable or None): the intercurrent events from the ADSL by ice_strategy, for
               fit_trial(..., sensitivity=True, ice=...) and `sensitivity`

    ds.attrs["source"] names the ADaM files; what the conversion excluded (derived records, records not flagged for
    analysis, subjects outside the population) is in data.changes_of(ds). Raises DatasetError naming the file, variable,
    subjects or records, why and the fix."""
    ds, ice = load_adam(AdamOptions(adsl, bds, param=param, **options), max_file_bytes)
    return (ds, ice) if with_ice else ds


def adam_events(results: str | Path, options: AdamOptions) -> IceTable:
    """The intercurrent events of ADaM datasets (their strategy map) for the saved fits of `results`, after checking that
    the ADaM files give the fits' trial: the same participants, arms and scores (ValueError, FileNotFoundError)."""
    results = Path(results)
    names = saved_names(results) if results.is_dir() else []
    if not names:
        raise FileNotFoundError(f"{results} holds no fitted model (no <model>/idata.nc): run fit.py first")
    ds, ice = load_adam(options)
    if ice is None:
        raise ValueError("the ADaM files give intercurrent events only with a strategy map: pass --ice-strategy "
                         "\"ADVERSE EVENT=J2R,*=MAR\" (or ice_strategy in the [adam] table; docs/adam.md)")
    saved = saved_dataset(load_fit(results / names[0] / "idata.nc", complete=False))
    fitted, read = [str(p) for p in saved["participant"].values], [str(p) for p in ds["participant"].values]
    where = f"the ADaM files ({options.adsl.name}, {options.bds.name}) are not the trial of the fits in {results}"
    if set(fitted) != set(read):
        gone, new = sorted(set(fitted) - set(read)), sorted(set(read) - set(fitted))
        parts = [f"{len(gone)} participant(s) of the fits are not analysed in them (e.g. {gone[:4]})" if gone else "",
                 f"{len(new)} participant(s) analysed in them are not in the fits (e.g. {new[:4]})" if new else ""]
        raise ValueError(f"{where}: {'; '.join(x for x in parts if x)}; give the files the fits were made from")
    other = ds.sel(participant=fitted)
    if list(saved["week"].values) != list(other["week"].values):
        raise ValueError(f"{where}: their visit weeks {list(other['week'].values)} are not the fits' {list(saved['week'].values)}")
    arms = [str(a) for a in saved["arm"].values] != [str(a) for a in other["arm"].values]
    if arms or not np.array_equal(saved["score"].values, other["score"].values, equal_nan=True):
        raise ValueError(f"{where}: the {'arms' if arms else 'scores'} of some participants differ; give the files the fits were made from")
    return ice


def sensitivity(fit, design=None, *, ice: str | Path | IceTable | None = None, deltas: Sequence[float] | None = None,
                tipping_threshold: float = DECISION_THRESHOLD, remission_cutoff: float = REMISSION_CUTOFF,
                seed: int | None = None, weeks: Sequence[int] | None = None) -> dict[str, pd.DataFrame]:
    """One fit's sensitivity analyses as tables, for notebooks: what `fit.py --sensitivity` writes in <out>/<model>/.

    fit      a fit (InferenceData, whole: as fit_trial returns it or deptrial.load_fit reads it) or the path of an idata.nc
    design   the TrialDesign it was fitted to, a dataset (folder or `load_dataset`'s output), or None: the dataset
             saved in the fit
    ice      an ice.csv path or an IceTable (None: no intercurrent events table)
    deltas, tipping_threshold, remission_cutoff, seed   as for `fit_trial` (seed None: the fit's own seed)
    weeks    the weeks reported, as `fit_trial`'s sensitivity_weeks (None: its defaults)

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
        ds, _ = dataset_of(design)
        design = build_design(ds)
    deltas, threshold = check_sensitivity_options(deltas, tipping_threshold)
    weeks = check_sensitivity_weeks(weeks, design.weeks, names={"weeks": "weeks"})
    if ice is not None and ds is None:
        raise ValueError("reading ice.csv needs the design's dataset: pass design=models.build_design(deptrial.load_dataset(folder))")
    table = read_ice(ice, ds) if ice is not None else None
    name = str(provenance(idata).get("model") or "model")
    result = model_sensitivity(name, idata, design, SensitivityOptions(table, deltas, threshold, remission_cutoff, seed, weeks))
    return {**result.tables, "notes": pd.DataFrame({"table": list(result.notes), "note": list(result.notes.values())})}


def contrast_table(fit, contrasts: Sequence[str] | str | None = None, design=None, *, mcid: float = DEFAULT_MCID) -> pd.DataFrame | None:
    """One fit's contrasts.csv as a table, for notebooks: per-arm means, each active arm - control, `contrasts`
    (as for `fit_trial`), the dose trend when doses are declared and P(each arm is best) at the end of treatment.

    fit      a fit (InferenceData) or the path of an idata.nc
    design   the TrialDesign it was fitted to, a dataset (folder or `load_dataset`'s output), or None: the dataset
             saved in the fit
    Returns None for a model without each arm's mean by week (no arm term, or another outcome). Raises ContrastError
    (a ValueError) for a contrast the trial's arms do not allow."""
    from diagnostics.contrasts import contrasts_table

    idata = load_fit(fit, complete=False) if isinstance(fit, (str, Path)) else fit
    if design is None:
        design = build_design(saved_dataset(idata))
    elif not isinstance(design, TrialDesign):
        design = build_design(dataset_of(design)[0])
    model = str(provenance(idata).get("model") or "")
    change_scores = REGISTRY[model].scores_change if model in REGISTRY else False
    return contrasts_table(idata, design.meta, check_contrasts(contrasts, design), mcid, change_scores=change_scores)


__all__ = [
    "DEFAULT_MODELS", "FinishingFailed", "ModelDataError", "ModelFit", "OutputBusy", "RunFailed", "RunResult", "SamplingFailed",
    "adam_events", "contrast_table", "fit_trial", "from_adam", "list_models", "rediagnose", "sensitivity",
]
