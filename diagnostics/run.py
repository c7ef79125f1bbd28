"""Diagnostics of a whole run: every model's convergence, PPC and LOO, the comparison, the report.

Used by deptrial.fit_trial (fit.py) at the end of a run (in-memory fits, refits possible through the model builders)
and by diagnose.py on a saved results folder (fits loaded from disk; refits if the dataset the
fits were made from is still there with the same checksum).

Files written into the run folder (each atomically):
    <model>/ppc_trajectory.csv, ppc_visits.csv, ppc_rates.csv, loo_visit.csv, loo_participant.csv,
    <model>/diagnostics.txt, <model>/convergence.csv, <model>/convergence.txt, <model>/figures/*.png,
    comparison_participant.csv, comparison_visit.csv, comparison.txt, report.html
and with the sensitivity analyses (`model_sensitivity`, fit.py / diagnose.py --sensitivity), for each
model that supports them:
    <model>/sensitivity.csv, tipping_point.csv, responders.csv, prior_sensitivity.csv,
    <model>/figures/tipping_point.png
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import arviz as az
import numpy as np
import pandas as pd

from data.atomic import atomic_write_bytes, usual_permissions
from data.ice import IceTable
from inference.idata_io import provenance
from models import REGISTRY

from . import plots
from .compare import ComparisonError, comparable_groups, compare, plain_language
from .convergence import Verdict, verdict
from .loo import KFOLD_K, REFIT_MAX, LooResult, grouped_kfold, grouped_kfold_integrated, loo_participants, loo_visits, remedy
from .ppc import REMISSION_CUTOFF, PPCResult, arm_labels, obs_index, run_ppc
from .prior_sensitivity import prior_sensitivity_table
from .report import render_report
from .responders import model_name as responder_model
from .responders import responder_table
from .sensitivity import DECISION_THRESHOLD, model_pieces, sensitivity_table, tipping_point
from .summary import Answer, answer, baseline_mean, observed_means, observed_means_of

REFIT_DRAWS = 1000  # posterior draws per chain in each leave-out refit
REFIT_TUNE = 500
REFIT_CHAINS = 2
REFIT_MIN_DRAWS = 1000  # fit.py refits only when the main fit has at least this many draws (chains x draws): smoke runs skip them
LEVELS = ("participant", "visit")  # the participant level (new patients) leads the comparison


@dataclass
class ModelDiagnostics:
    name: str
    verdict: Verdict
    ppc: PPCResult | None  # None for a model of another outcome (the MMRM's change scores): compared, not checked
    loo: dict[str, LooResult]
    estimates: pd.DataFrame | None
    figures: dict[str, bytes]
    convergence_rows: pd.DataFrame
    description: str = ""
    likelihood: str = ""
    created: str = ""
    settings: dict = field(default_factory=dict)
    priors: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # seconds per stage: ppc_s, loo_s, figures_s


# ---------------------------------------------------------------- sensitivity analyses (--sensitivity)

SENSITIVITY_TABLES = ("sensitivity", "tipping_point", "responders", "prior_sensitivity")  # <model>/<name>.csv
TIPPING_FIGURE = "tipping_point"  # <model>/figures/tipping_point.png
SEEN_AS = {  # what each table is, for the notes on what a model does not support
    "sensitivity": "reference-based strategies (J2R, CR, CIR) and delta adjustment",
    "tipping_point": "tipping point",
    "responders": "responder and remission estimands",
    "prior_sensitivity": "power-scaling prior sensitivity",
}


@dataclass(frozen=True)
class SensitivityOptions:
    """How the sensitivity analyses are run: intercurrent events, delta rows, decision threshold, remission, seed.

    ice               validated intercurrent events (data.ice.load_ice), or None: every participant follows the
                      strategy of the analysis after their last observed visit
    deltas            delta rows of sensitivity.csv in outcome points (None: diagnostics.sensitivity.default_deltas)
    threshold         the decision threshold of the tipping point: P(benefit) below it, benefit is not concluded
    remission_cutoff  remission: score at or below this
    seed              the responder imputations' seed (None: each fit's own seed)
    """

    ice: IceTable | None = None
    deltas: tuple[float, ...] | None = None
    threshold: float = DECISION_THRESHOLD
    remission_cutoff: float = REMISSION_CUTOFF
    seed: int | None = None


def check_sensitivity_options(deltas, threshold) -> tuple[tuple[float, ...] | None, float]:
    """Refuse delta rows or a decision threshold that mean nothing (ValueError), before any fit."""
    if deltas is not None:
        try:
            deltas = tuple(float(x) for x in deltas)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"deltas must be numbers of outcome points, e.g. 2,4,6 (got {deltas!r})") from exc
        bad = [x for x in deltas if not np.isfinite(x) or x < 0]
        if bad or not deltas:
            raise ValueError(f"deltas must be finite, at least 0 and at least one (got {list(deltas)}): outcome points added "
                             "to the imputed scores after dropout, e.g. 2,4,6")
    threshold = float(threshold)
    if not 0.5 <= threshold < 1:
        raise ValueError(f"the tipping-point threshold is a posterior probability of benefit in [0.5, 1), e.g. 0.975 (got {threshold:g})")
    return deltas, threshold


@dataclass
class ModelSensitivity:
    """One model's sensitivity analyses: the tables written to <model>/<name>.csv and what the report shows."""

    name: str
    end_week: int  # the end of treatment: the report's week
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # SENSITIVITY_TABLES computed for this model
    tipping_message: str = ""
    tipping_figure: bytes | None = None
    notes: dict[str, str] = field(default_factory=dict)  # table -> why this model has none
    saved: bool = False  # read back from the results folder (diagnose.py without --sensitivity), not recomputed
    timings: dict = field(default_factory=dict)


def unsupported(idata: az.InferenceData, design, model: str) -> dict[str, str]:
    """Why a fit has no strategy / tipping-point table or no responder table ({} when it has both): the engines' own refusals."""
    notes = {}
    try:
        model_pieces(idata, design, model)
    except ValueError as exc:
        notes["sensitivity"] = notes["tipping_point"] = str(exc)
    try:
        responder_model(idata, model)
    except ValueError as exc:
        notes["responders"] = str(exc)
    return notes


def tipping_frame(tp) -> pd.DataFrame:
    """The tipping point's grid with what it found, repeated on every row: strategy, arms, threshold,
    tipping_delta (the smallest grid delta at which benefit is no longer concluded; empty if none),
    tipping_exact (the exact flip point) and tipping_message."""
    return tp.table.assign(strategy=tp.strategy, arms=tp.arms, threshold=tp.threshold, imputed_share=tp.share,
                           tipping_delta=tp.delta if tp.delta is not None else np.nan,
                           tipping_exact=tp.exact if tp.exact is not None else np.nan, tipping_message=tp.message)


def model_sensitivity(name: str, idata: az.InferenceData, design, options: SensitivityOptions | None = None) -> ModelSensitivity:
    """The four sensitivity tables of one fit, those its model supports, and notes for the others.

    idata    the fit, whole (deptrial.load_fit reads a saved one back with its log-likelihood)
    design   the TrialDesign it was fitted to
    """
    options = options or SensitivityOptions()
    model = str(provenance(idata).get("model") or name)
    result = ModelSensitivity(name, int(design.meta.treatment_end))
    result.notes = unsupported(idata, design, model)
    t0 = time.perf_counter()
    if "sensitivity" not in result.notes:
        result.tables["sensitivity"] = sensitivity_table(idata, design, deltas=options.deltas, ice=options.ice, model=model)
        tp = tipping_point(idata, design, threshold=options.threshold, ice=options.ice, model=model)
        result.tables["tipping_point"] = tipping_frame(tp)
        result.tipping_message, result.tipping_figure = tp.message, tp.figure
    t1 = time.perf_counter()
    if "responders" not in result.notes:
        seed = options.seed if options.seed is not None else int(provenance(idata).get("seed", 1))
        result.tables["responders"] = responder_table(idata, design, remission_cutoff=options.remission_cutoff, seed=seed, model=model)
    t2 = time.perf_counter()
    result.tables["prior_sensitivity"] = prior_sensitivity_table(idata)
    result.timings = {"strategies_s": t1 - t0, "responders_s": t2 - t1, "prior_sensitivity_s": time.perf_counter() - t2}
    return result


def saved_sensitivity(folder: str | Path, idatas: dict[str, az.InferenceData]) -> dict[str, ModelSensitivity]:
    """The sensitivity tables a results folder already holds (from an earlier --sensitivity), read back for the report."""
    from data.schema import meta_of
    from inference.storage import DATA_GROUP, saved_dataset
    from models import build_design

    folder = Path(folder)
    out = {}
    for name, idata in idatas.items():
        files = {t: folder / name / f"{t}.csv" for t in SENSITIVITY_TABLES}
        if not any(f.is_file() for f in files.values()) or DATA_GROUP not in idata.groups():
            continue
        ds = saved_dataset(idata)
        result = ModelSensitivity(name, int(meta_of(ds).treatment_end), saved=True)
        result.tables = {t: pd.read_csv(f) for t, f in files.items() if f.is_file()}
        result.notes = {t: n for t, n in unsupported(idata, build_design(ds), str(provenance(idata).get("model") or name)).items()
                        if t not in result.tables}
        tp = result.tables.get("tipping_point")
        if tp is not None and len(tp) and "tipping_message" in tp:
            result.tipping_message = str(tp["tipping_message"].iloc[0])
        png = folder / name / "figures" / f"{TIPPING_FIGURE}.png"
        result.tipping_figure = png.read_bytes() if png.is_file() else None
        out[name] = result
    return out


@dataclass
class RunDiagnostics:
    title: str
    data_source: str
    checksum: str
    generated: str
    data_summary: dict
    labels: tuple[str, str]
    models: dict[str, ModelDiagnostics]
    comparisons: dict[str, pd.DataFrame]
    plain_language: dict[str, str]
    comparison_notes: list[str]
    figures: dict[str, bytes]
    versions: dict
    answers: dict[str, Answer] = field(default_factory=dict)  # every fitted model's answer, the report's first section
    answer_figures: dict[str, dict[str, bytes]] = field(default_factory=dict)  # per model: effects, trajectory, markers
    outcome: str = "score"
    sensitivity: dict[str, ModelSensitivity] = field(default_factory=dict)  # per model, with --sensitivity

    def comparison_text(self) -> str:
        lines = []
        for level, table in self.comparisons.items():
            lines.append(f"[{level} level] {self.plain_language[level]}")
            with pd.option_context("display.width", 200, "display.float_format", "{:.2f}".format):
                lines.append(table.to_string())
        lines += [f"note: {n}" for n in self.comparison_notes]
        return "\n".join(lines)


def _attr(idata, key, default=None):
    value = idata.posterior.attrs.get(key, default)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def population_rows(table: pd.DataFrame) -> pd.DataFrame:
    # sampler-space (transformed) variables, named '..._log__' etc., are judged but not listed
    keep = [i for i in table.index if not str(i).startswith(plots.SKIP_PREFIXES) and not str(i).split("[")[0].endswith("__")]
    return table.loc[keep]


def diagnose_model(
    name: str, idata: az.InferenceData, estimates=None, treated=None, labels=None, remission_cutoff: float = REMISSION_CUTOFF,
    description: str = "", check=None,
) -> ModelDiagnostics:
    """Convergence (unless its verdict `check` is given), PPC, both LOO levels and the figures of one fitted model (no refits)."""
    check = check if check is not None else verdict(idata)
    t0 = time.perf_counter()
    ppc = run_ppc(idata, treated=treated, labels=labels, remission_cutoff=remission_cutoff)
    t1 = time.perf_counter()
    loo = {"participant": loo_participants(idata), "visit": loo_visits(idata)}
    t2 = time.perf_counter()
    ix = obs_index(idata, treated, labels)
    figures = {
        "rank": plots.rank_plot(idata),
        "energy": plots.energy_plot(idata),
        "trajectory": plots.trajectory_plot(ppc.trajectory),
        "visits": plots.visit_distribution_plot(idata, ix),
        "rates": plots.rates_plot(ppc.rates) if len(ppc.rates) else None,
        "loo_pit": plots.loo_pit_plot(idata),
    }
    timings = {"ppc_s": t1 - t0, "loo_s": t2 - t1, "figures_s": time.perf_counter() - t2}
    priors = _attr(idata, "priors", {}) or {}
    return ModelDiagnostics(
        name=name,
        verdict=check,
        ppc=ppc,
        loo=loo,
        estimates=estimates,
        figures={k: v for k, v in figures.items() if v},
        convergence_rows=population_rows(check.table),
        description=description,
        likelihood=str(_attr(idata, "likelihood", "")),
        created=str(idata.posterior.attrs.get("created", "")),
        settings=_attr(idata, "settings", {}) or {},
        priors=priors if isinstance(priors, dict) else {},
        timings=timings,
    )


def score_model(name: str, idata: az.InferenceData, estimates=None, description: str = "", check=None) -> ModelDiagnostics:
    """Convergence and the integrated LOO of a model whose outcome is not the visit scores but that predicts the
    same post-baseline scores given the baseline (the MMRM): it joins the comparison, without the score checks."""
    check = check if check is not None else verdict(idata)
    priors = _attr(idata, "priors", {}) or {}
    return ModelDiagnostics(
        name=name, verdict=check, ppc=None,
        loo={"participant": loo_participants(idata), "visit": loo_visits(idata)},
        estimates=estimates,
        figures={k: v for k, v in {"rank": plots.rank_plot(idata), "energy": plots.energy_plot(idata)}.items() if v},
        convergence_rows=population_rows(check.table), description=description,
        likelihood=str(_attr(idata, "likelihood", "")), created=str(idata.posterior.attrs.get("created", "")),
        settings=_attr(idata, "settings", {}) or {}, priors=priors if isinstance(priors, dict) else {},
    )


def diagnose_any(name, idata, estimates=None, treated=None, labels=None, remission_cutoff=REMISSION_CUTOFF, description="", check=None):
    """`diagnose_model` for a visit-score fit, `score_model` for another outcome with the integrated densities."""
    if "observed_data" in idata.groups() and "y" in idata.observed_data:
        return diagnose_model(name, idata, estimates, treated, labels, remission_cutoff, description, check=check)
    return score_model(name, idata, estimates, description, check=check)


def refit_settings(settings):
    """Sampler settings for leave-out refits: fewer draws and chains than the main fit, same sampler and seed."""
    return dataclasses.replace(settings, draws=min(settings.draws, REFIT_DRAWS), tune=min(settings.tune, REFIT_TUNE), chains=min(settings.chains, REFIT_CHAINS))


def apply_remedies(group: list[str], models: dict[str, ModelDiagnostics], design, builders: dict[str, Callable], settings, level: str, kfold: int, log=print, min_draws: int = 0) -> list[str]:
    """Replace unreliable PSIS estimates at `level` by refits, the same way for every model of the group."""
    notes = []
    bad = {n: int(models[n].loo[level].bad.sum()) for n in group}
    if not any(bad.values()):
        return notes
    if any(models[n].loo[level].integrated for n in group):
        runnable = level == "participant" and kfold >= 2 and design is not None and settings is not None and all(n in builders for n in group)
        if not runnable:
            notes.append(
                f"{level} level: {', '.join(f'{n} ({bad[n]})' for n in group if bad[n])} unit(s) with Pareto k above the threshold "
                "on the integrated densities: those elpd values are less reliable"
                + ("; python diagnose.py RESULTS --kfold 5 replaces them by grouped K-fold" if level == "participant" else "")
            )
            return notes
        rs = refit_settings(settings)
        for n in group:  # the same folds for every model, so differences stay paired
            log(f"  {n}: grouped {kfold}-fold cross-validation by participant on the integrated densities ({kfold} refits)")
            old = models[n].loo[level]
            kf = grouped_kfold_integrated(design, builders[n], rs, k=kfold)
            models[n].loo[level] = dataclasses.replace(kf, pareto_k=old.pareto_k, p_loo=old.p_loo,
                                                       notes=old.notes + kf.notes + [f"PSIS elpd was {old.elpd:.1f}"])
        notes.append(f"{level} level: grouped {kfold}-fold cross-validation on the integrated densities replaced PSIS for every model "
                     "(some participants had Pareto k above the threshold)")
        return notes
    if settings is not None and settings.chains * settings.draws < min_draws:
        notes.append(
            f"{level} level: {', '.join(f'{n} ({bad[n]})' for n in group if bad[n])} unit(s) with Pareto k above the threshold were not refitted: "
            f"the fit has fewer than {min_draws} draws (a smoke run); refit with more draws, or run diagnose.py --kfold K. Those elpd values are unreliable"
        )
        return notes
    missing = [n for n in group if bad[n] and n not in builders]
    if missing or design is None or settings is None or kfold < 1:
        notes.append(
            f"{level} level: {', '.join(f'{n} ({bad[n]})' for n in group if bad[n])} unit(s) with Pareto k above the threshold were not refitted "
            "(refits disabled or the data/model are unavailable): those elpd values are unreliable; "
            "the remedy is grouped K-fold by participant: python diagnose.py RESULTS --kfold 5"
        )
        return notes
    rs = refit_settings(settings)
    if max(bad.values()) > REFIT_MAX:
        # K-fold for every model, with the same folds, so differences are paired
        how = "grouped K-fold cross-validation by participant" if level == "participant" else "K-fold cross-validation by visit"
        for n in group:
            log(f"  {n}: {bad[n]} {level}(s) with Pareto k > threshold: {how.replace('K-fold', f'{kfold}-fold')} ({kfold} refits)")
            kf = grouped_kfold(design, builders[n], rs, k=kfold, level=level)
            old = models[n].loo[level]
            models[n].loo[level] = dataclasses.replace(
                kf, pareto_k=old.pareto_k, p_loo=old.p_loo, notes=old.notes + kf.notes + [f"{bad[n]} {level}(s) had Pareto k above the threshold; PSIS elpd was {old.elpd:.1f}"]
            )
        notes.append(f"{level} level: {how.replace('K-fold', f'{kfold}-fold')} replaced PSIS for every model (some had more than {REFIT_MAX} units with high Pareto k)")
    else:
        for n in group:
            if bad[n]:
                log(f"  {n}: refitting {bad[n]} {level}(s) with Pareto k > threshold (exact leave-out)")
                models[n].loo[level] = remedy(models[n].loo[level], design, builders[n], rs, refit_max=REFIT_MAX, k=kfold)
        notes.append(f"{level} level: units with high Pareto k were refitted without their data (exact leave-one-out)")
    return notes


def diagnose_run(
    idatas: dict[str, az.InferenceData],
    estimates: dict[str, pd.DataFrame] | None = None,
    design=None,
    builders: dict[str, Callable] | None = None,
    settings=None,
    kfold: int = KFOLD_K,
    remedy_levels: tuple[str, ...] = ("participant",),
    remission_cutoff: float = REMISSION_CUTOFF,
    treated=None,
    labels=None,
    descriptions: dict[str, str] | None = None,
    title: str = "",
    log=print,
    refit_min_draws: int = 0,
    precomputed: dict | None = None,
    answers: dict[str, Answer] | None = None,
    observed: pd.DataFrame | None = None,
    outcome: str = "score",
    data_summary: dict | None = None,
) -> RunDiagnostics:
    """Everything the report needs; refits (for units with high Pareto k) only where builders are given.

    idatas: the visit-score fits (checks and comparison); answers: every fitted model's answer
    (diagnostics/summary.py), drawn first in the report; without them, the visit-score fits' own."""
    if not idatas and not answers:
        raise ValueError("no fitted models to diagnose")
    estimates, builders, descriptions = estimates or {}, builders or {}, descriptions or {}
    first = next(iter(idatas.values())) if idatas else None
    if treated is None and design is not None:
        treated = design.treated
    if treated is None:  # a model without an arm term (e.g. null) borrows the arms from a visit-score model that has one
        for idata in idatas.values():  # (not from the MMRM: its 'treated' covers only participants with a post-baseline visit)
            has_scores = "observed_data" in idata.groups() and "y" in idata.observed_data
            if has_scores and "constant_data" in idata.groups() and "treated" in idata.constant_data:
                treated = np.asarray(idata.constant_data["treated"].values)
                break
    labels = labels or (arm_labels(first) if first is not None else ("control", "treatment"))
    if observed is None and first is not None and treated is not None:
        try:
            observed = observed_means_of(obs_index(first, treated, labels))
        except ValueError:
            observed = None
    if answers is None:
        base = float(np.nanmean(observed.loc[observed["week"] == observed["week"].min(), "mean"])) if observed is not None else float("nan")
        answers = {n: answer(n, idata, estimates.get(n), labels, base, outcome, descriptions.get(n, "")) for n, idata in idatas.items()}
    answer_figures = {
        n: {k: v for k, v in {
            "effects": plots.effects_forest_plot(a, labels),
            "trajectory": plots.fitted_trajectory_plot(a, observed, outcome),
            "markers": plots.marker_forest_plot(a),
        }.items() if v}
        for n, a in answers.items()
    }
    models = {}
    for name, idata in idatas.items():
        if precomputed and name in precomputed:  # e.g. computed in the fit's worker processes (deptrial.api), beside the other fits
            models[name] = precomputed[name]
            continue
        log(f"diagnostics: {name}")
        models[name] = diagnose_any(
            name, idata, estimates.get(name), treated, labels, remission_cutoff, descriptions.get(name, "")
        )

    groups = comparable_groups(idatas)
    notes: list[str] = []
    main = max(groups, key=len) if groups else []
    if len(groups) > 1:
        for g in groups:
            if g is not main:
                notes.append(
                    f"not compared with {', '.join(main)}: {', '.join(g)} fitted to different observations "
                    "(other outcome values, e.g. change scores or biomarkers, or other data): elpd values are only comparable on the same data"
                )
    for level, score in (("participant", loo_participants), ("visit", loo_visits)):  # one quantity per comparison
        plain = [n for n in main if not models[n].loo[level].integrated]
        if plain and len(plain) < len(main):
            other = [n for n in main if models[n].ppc is None]  # no conditional form on the scores (the MMRM)
            if other:
                main = [n for n in main if n not in other]
                notes.append(f"not compared with {', '.join(main)}: {', '.join(other)} can only be compared on the integrated "
                             f"densities, which {', '.join(plain)} does not have")
            for n in main:
                if models[n].loo[level].integrated:
                    models[n].loo[level] = score(idatas[n], integrated=False)
            notes.append(f"{level} level: compared on the log-likelihood conditional on the participant effects, because "
                         f"{', '.join(plain)} has no integrated form (expect high Pareto k at the participant level)")
    for level in remedy_levels:
        notes += apply_remedies(main, models, design, builders, settings, level, kfold, log=log, min_draws=refit_min_draws)
    comparisons, sentences = {}, {}
    for level in LEVELS if main else ():
        try:
            table = compare({n: models[n].loo[level] for n in main})
        except ComparisonError as exc:
            notes.append(str(exc))
            continue
        comparisons[level] = table
        sentences[level] = plain_language(table, level)
    figures = {}
    if main:
        figures["pareto_k"] = plots.pareto_k_plot({n: models[n].loo["participant"] for n in main})
    info = (_attr(first, "data_summary", {}) if first is not None else data_summary) or {}
    return RunDiagnostics(
        title=title or str(_attr(first, "data_source", "") if first is not None else ""),
        data_source=str(_attr(first, "data_source", "")) if first is not None else "",
        checksum=str(first.posterior.attrs.get("data_checksum", "")) if first is not None else (design.checksum if design is not None else ""),
        generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        data_summary=info if isinstance(info, dict) else {},
        labels=tuple(labels),
        models=models,
        comparisons=comparisons,
        plain_language=sentences,
        comparison_notes=notes,
        figures=figures,
        versions=(_attr(first, "versions", {}) if first is not None else {}) or {},
        answers=answers,
        answer_figures=answer_figures,
        outcome=outcome,
    )


def _write(path: Path, payload: bytes) -> None:
    """Atomic write, then the usual permissions (temporary files are created private)."""
    atomic_write_bytes(path, payload)
    usual_permissions(path)


def _csv(df: pd.DataFrame, path: Path, index: bool = False) -> None:
    _write(path, df.to_csv(index=index).encode())


def write_outputs(run: RunDiagnostics, folder: str | Path) -> Path:
    """Write every table, figure and the report into the run folder; returns the report path."""
    folder = Path(folder)
    for name, m in run.models.items():
        mf = folder / name
        (mf / "figures").mkdir(parents=True, exist_ok=True)
        if m.ppc is not None:
            _csv(m.ppc.trajectory, mf / "ppc_trajectory.csv")
            _csv(m.ppc.visits, mf / "ppc_visits.csv")
            _csv(m.ppc.rates, mf / "ppc_rates.csv")
        for level, r in m.loo.items():
            _csv(r.table(), mf / f"loo_{level}.csv")
        _csv(m.verdict.table, mf / "convergence.csv", index=True)
        _write(mf / "convergence.txt", (m.verdict.text() + "\n").encode())
        ppc = [m.ppc.text(), json.dumps({"loo_pit": m.ppc.loo_pit})] if m.ppc is not None else []
        text = "\n".join([m.verdict.text(), *ppc, *[r.text() for r in m.loo.values()]])
        _write(mf / "diagnostics.txt", (text + "\n").encode())
        for key, png in m.figures.items():
            _write(mf / "figures" / f"{key}.png", png)
    for name, sens in run.sensitivity.items():
        if sens.saved:  # already in the folder
            continue
        (folder / name / "figures").mkdir(parents=True, exist_ok=True)
        for table, df in sens.tables.items():
            _csv(df, folder / name / f"{table}.csv")
        if sens.tipping_figure:
            _write(folder / name / "figures" / f"{TIPPING_FIGURE}.png", sens.tipping_figure)
    for name, figs in run.answer_figures.items():  # the report's first section, also as PNG files beside it
        (folder / "summary").mkdir(exist_ok=True)
        for key, png in figs.items():
            _write(folder / "summary" / f"{name}_{key}.png", png)
    for level, table in run.comparisons.items():
        _csv(table, folder / f"comparison_{level}.csv", index=True)
    _write(folder / "comparison.txt", (run.comparison_text() + "\n").encode())
    report = folder / "report.html"
    _write(report, render_report(run).encode("utf-8"))
    return report


def saved_names(folder: Path) -> list[str]:
    """The models saved in a results folder (<model>/idata.nc), in run.json's order when present."""
    names = sorted(p.parent.name for p in folder.glob("*/idata.nc"))
    run_json = folder / "run.json"
    if run_json.is_file():
        order = list(json.loads(run_json.read_text()).get("models", {}))
        names = [n for n in order if n in names] + [n for n in names if n not in order]
    return names


def load_run(folder: str | Path) -> tuple[dict[str, az.InferenceData], dict[str, pd.DataFrame]]:
    """The visit-score fits (and estimates tables) saved in a results folder, in run.json's order when present.

    Each fit is read back whole (inference/storage.py recomputes the groups a saved fit does not
    store); fits of other outcomes (MMRM change scores, biomarker change, mediation) are not in the
    checks and the comparison, so they are not loaded (their answers are read from their own files by
    `saved_answers`): a folder holding only such fits gives no fits here."""
    from inference.storage import complete_saved, load_fit, scores_visits

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no results folder at {folder}")
    names = saved_names(folder)
    if not names:
        raise FileNotFoundError(f"{folder} holds no fitted model (no <model>/idata.nc): run fit.py first")
    idatas, estimates = {}, {}
    for n in names:
        stored = load_fit(folder / n / "idata.nc", complete=False)
        if not scores_visits(stored):
            continue
        idatas[n] = complete_saved(stored)
        est = folder / n / "estimates.csv"
        if est.is_file():
            estimates[n] = pd.read_csv(est)
    return idatas, estimates


@dataclass
class SavedAnswers:
    """What the report's first section needs from a saved results folder."""

    answers: dict[str, Answer] = field(default_factory=dict)
    observed: pd.DataFrame | None = None  # observed means by arm and week
    labels: tuple[str, str] | None = None  # (control, treatment)
    outcome: str = "score"
    title: str = ""


def saved_answers(folder: str | Path, loaded: dict[str, az.InferenceData] | None = None) -> SavedAnswers:
    """Every saved fit's answer (the report's first section), from its posterior and estimates.csv, in run.json's order.

    loaded: fits already read from the folder (e.g. by `load_run`), not read again. The observed
    means, labels, outcome and title come from the dataset saved in the fits (empty without one)."""
    from data.schema import meta_of
    from inference.storage import DATA_GROUP, load_fit

    folder = Path(folder)
    names = saved_names(folder)
    loaded = loaded or {}
    stored = {n: loaded[n] if n in loaded else load_fit(folder / n / "idata.nc", complete=False) for n in names}
    with_data = next((i for i in stored.values() if DATA_GROUP in i.groups()), None)
    if with_data is None:
        return SavedAnswers()
    ds = with_data[DATA_GROUP]
    meta = meta_of(ds)
    labels = (meta.control_arm, meta.treatment_arm)
    observed = observed_means(ds, labels)
    baseline = baseline_mean(ds)
    answers = {}
    for n, idata in stored.items():
        est = folder / n / "estimates.csv"
        table = pd.read_csv(est, keep_default_na=True) if est.is_file() else None
        if table is not None and "marker" in table:
            table["marker"] = table["marker"].astype("string").fillna("")
        model = str(_attr(idata, "model", n))
        description = REGISTRY[model].description if model in REGISTRY else ""
        answers[n] = answer(n, idata, table, labels, baseline, meta.outcome_label, description)
    return SavedAnswers(answers, observed, labels, meta.outcome_label, meta.title)
