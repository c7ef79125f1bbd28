"""Diagnostics of a whole run: every model's convergence, PPC and LOO, the comparison, what the report shows.

Used by deptrial.fit_trial (fit.py) at the end of a run (in-memory fits, refits possible through the model builders)
and by deptrial.rediagnose (diagnose.py) on a saved results folder (diagnostics.saved reads the fits back;
refits if the dataset the fits were made from is still there with the same checksum). The other parts of a
run's diagnostics: diagnostics.remedies (refits for high Pareto k), diagnostics.sensitivity_analyses
(--sensitivity), diagnostics.outputs (the files and the report).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pandas as pd

from . import plots
from .compare import ComparisonError, comparable_groups, compare, plain_language
from .convergence import Verdict, verdict
from .loo import KFOLD_K, LooResult, loo_participants, loo_visits, relative_efficiency, release
from .ppc import REMISSION_CUTOFF, PPCResult, arm_labels, obs_index, participant_arms, replicated, run_ppc
from .remedies import apply_remedies
from .sensitivity_analyses import ModelSensitivity
from .summary import Answer, answer, observed_means_of

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


@dataclass
class RunDiagnostics:
    title: str
    data_source: str
    checksum: str
    generated: str
    data_summary: dict
    labels: tuple[str, ...]  # every arm, the control first
    models: dict[str, ModelDiagnostics]
    comparisons: dict[str, pd.DataFrame]
    plain_language: dict[str, str]
    comparison_notes: list[str]
    figures: dict[str, bytes]
    versions: dict
    answers: dict[str, Answer] = field(default_factory=dict)  # every fitted model's answer, the report's first section
    answer_figures: dict[str, dict[str, bytes]] = field(default_factory=dict)  # per model: effects, trajectory, contrasts, markers
    outcome: str = "score"
    sensitivity: dict[str, ModelSensitivity] = field(default_factory=dict)  # per model, with --sensitivity
    submission: dict = field(default_factory=dict)  # per model, diagnostics.csr_tables.SubmissionTables (ARD, efficacy, sensitivity)
    borrowing: dict | None = None  # with a MAP prior from past trials: map_prior.json's record (diagnostics/borrowing.py)

    def comparison_text(self) -> str:
        lines = []
        for level, table in self.comparisons.items():
            lines.append(f"[{level} level] {self.plain_language[level]}")
            with pd.option_context("display.width", 200, "display.float_format", "{:.2f}".format):
                lines.append(table.to_string())
        lines += [f"note: {n}" for n in self.comparison_notes]
        return "\n".join(lines)


def posterior_attr(idata, key, default=None):
    """A provenance attribute of a fit's posterior, JSON-decoded when it decodes."""
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
    name: str, idata: az.InferenceData, estimates=None, arms=None, labels=None, remission_cutoff: float = REMISSION_CUTOFF,
    description: str = "", check=None,
) -> ModelDiagnostics:
    """Convergence (unless its verdict `check` is given), PPC, both LOO levels and the figures of one fitted model (no refits).

    arms  each participant's arm index (0 the control arm, a the a-th active arm; default: the fit's constant_data)
    labels  every arm's label, the control first
    Each quantity is computed once: PSIS's relative efficiency from the verdict's ESS, the PSIS weights of 'y' for
    the LOO-PIT (and the visit-level LOO without the integrated densities), the replicated scores for every check."""
    check = check if check is not None else verdict(idata)
    relative_efficiency(idata, check.stats)
    t0 = time.perf_counter()
    ix = obs_index(idata, arms, labels)
    rep = replicated(idata)
    ppc = run_ppc(idata, remission_cutoff=remission_cutoff, index=ix, rep=rep)
    t1 = time.perf_counter()
    loo = {"participant": loo_participants(idata), "visit": loo_visits(idata)}
    release(idata)  # the weights of 'y' have served the LOO-PIT (its values) and the visit-level LOO
    t2 = time.perf_counter()
    figures = {
        "rank": plots.rank_plot(idata),
        "energy": plots.energy_plot(idata, check.ebfmi),
        "trajectory": plots.trajectory_plot(ppc.trajectory),
        "visits": plots.visit_distribution_plot(idata, ix, rep=rep),
        "rates": plots.rates_plot(ppc.rates) if len(ppc.rates) else None,
        "loo_pit": plots.loo_pit_plot(ppc.pit),
    }
    timings = {"ppc_s": t1 - t0, "loo_s": t2 - t1, "figures_s": time.perf_counter() - t2}
    priors = posterior_attr(idata, "priors", {}) or {}
    return ModelDiagnostics(
        name=name,
        verdict=check,
        ppc=ppc,
        loo=loo,
        estimates=estimates,
        figures={k: v for k, v in figures.items() if v},
        convergence_rows=population_rows(check.table),
        description=description,
        likelihood=str(posterior_attr(idata, "likelihood", "")),
        created=str(idata.posterior.attrs.get("created", "")),
        settings=posterior_attr(idata, "settings", {}) or {},
        priors=priors if isinstance(priors, dict) else {},
        timings=timings,
    )


def score_model(name: str, idata: az.InferenceData, estimates=None, description: str = "", check=None) -> ModelDiagnostics:
    """Convergence and the integrated LOO of a model whose outcome is not the visit scores but that predicts the
    same post-baseline scores given the baseline (the MMRM): it joins the comparison, without the score checks."""
    check = check if check is not None else verdict(idata)
    relative_efficiency(idata, check.stats)
    priors = posterior_attr(idata, "priors", {}) or {}
    return ModelDiagnostics(
        name=name, verdict=check, ppc=None,
        loo={"participant": loo_participants(idata), "visit": loo_visits(idata)},
        estimates=estimates,
        figures={k: v for k, v in {"rank": plots.rank_plot(idata), "energy": plots.energy_plot(idata, check.ebfmi)}.items() if v},
        convergence_rows=population_rows(check.table), description=description,
        likelihood=str(posterior_attr(idata, "likelihood", "")), created=str(idata.posterior.attrs.get("created", "")),
        settings=posterior_attr(idata, "settings", {}) or {}, priors=priors if isinstance(priors, dict) else {},
    )


def diagnose_any(name, idata, estimates=None, arms=None, labels=None, remission_cutoff=REMISSION_CUTOFF, description="", check=None):
    """`diagnose_model` for a visit-score fit, `score_model` for another outcome with the integrated densities."""
    if "observed_data" in idata.groups() and "y" in idata.observed_data:
        return diagnose_model(name, idata, estimates, arms, labels, remission_cutoff, description, check=check)
    return score_model(name, idata, estimates, description, check=check)


def diagnose_run(
    idatas: dict[str, az.InferenceData],
    estimates: dict[str, pd.DataFrame] | None = None,
    design=None,
    builders: dict[str, Callable] | None = None,
    settings=None,
    kfold: int = KFOLD_K,
    remedy_levels: tuple[str, ...] = ("participant",),
    remission_cutoff: float = REMISSION_CUTOFF,
    arms=None,
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
    (diagnostics/summary.py), drawn first in the report; without them, the visit-score fits' own.
    arms: each participant's arm index (default: the design's, else a visit-score fit's, else the dataset saved
    with a fit); labels: every arm's label, the control first."""
    if not idatas and not answers:
        raise ValueError("no fitted models to diagnose")
    estimates, builders, descriptions = estimates or {}, builders or {}, descriptions or {}
    first = next(iter(idatas.values())) if idatas else None
    if arms is None and design is not None:
        arms = design.arm_idx
    if arms is None:  # a model without an arm term (e.g. null) borrows the arms from a visit-score model that has one
        for idata in idatas.values():  # (not from the MMRM: its arms cover only participants with a post-baseline visit)
            has_scores = "observed_data" in idata.groups() and "y" in idata.observed_data
            arms = participant_arms(idata) if has_scores else None
            if arms is not None:
                break
    if arms is None:  # no fit with an arm term: the dataset saved with the fits
        from inference.storage import DATA_GROUP

        arms = next((np.asarray(i[DATA_GROUP]["arm_index"].values, dtype=int) for i in idatas.values()
                     if DATA_GROUP in i.groups() and "arm_index" in i[DATA_GROUP]), None)
    labels = labels or (arm_labels(first) if first is not None else ("control", "treatment"))
    if observed is None and first is not None and arms is not None:
        try:
            observed = observed_means_of(obs_index(first, arms, labels))
        except ValueError:
            observed = None
    if answers is None:
        base = float(np.nanmean(observed.loc[observed["week"] == observed["week"].min(), "mean"])) if observed is not None else float("nan")
        answers = {n: answer(n, idata, estimates.get(n), labels, base, outcome, descriptions.get(n, "")) for n, idata in idatas.items()}
    answer_figures = {
        n: {k: v for k, v in {
            "effects": plots.effects_forest_plot(a, labels),
            "trajectory": plots.fitted_trajectory_plot(a, observed, outcome),
            "contrasts": plots.contrasts_forest_plot(a),
            "markers": plots.marker_forest_plot(a),
        }.items() if v}
        for n, a in answers.items()
    }
    models = {}
    for name, idata in idatas.items():
        if precomputed and name in precomputed:  # e.g. computed in the fit's worker processes (deptrial.orchestrate), beside the other fits
            models[name] = precomputed[name]
            continue
        log(f"diagnostics: {name}")
        models[name] = diagnose_any(
            name, idata, estimates.get(name), arms, labels, remission_cutoff, descriptions.get(name, "")
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
    info = (posterior_attr(first, "data_summary", {}) if first is not None else data_summary) or {}
    return RunDiagnostics(
        title=title or str(posterior_attr(first, "data_source", "") if first is not None else ""),
        data_source=str(posterior_attr(first, "data_source", "")) if first is not None else "",
        checksum=str(first.posterior.attrs.get("data_checksum", "")) if first is not None else (design.checksum if design is not None else ""),
        generated=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        data_summary=info if isinstance(info, dict) else {},
        labels=tuple(labels),
        models=models,
        comparisons=comparisons,
        plain_language=sentences,
        comparison_notes=notes,
        figures=figures,
        versions=(posterior_attr(first, "versions", {}) if first is not None else {}) or {},
        answers=answers,
        answer_figures=answer_figures,
        outcome=outcome,
    )
