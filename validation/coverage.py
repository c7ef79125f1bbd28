"""Frequentist coverage of the posterior for each active arm's effect: many trials at fixed true values.

Trials come from the default generator (data.synthetic, 252 participants, the published design)
with different seeds and the same parameters; each is written and loaded through the documented
format and fitted by the `treatment` model compiled once. The generator is not the model: it
screens on the entry score, rounds and clips scores, and has an IL-6 moderation the `treatment`
model does not include, so this checks the whole analysis, not only the sampler.

With fast=True (what `python -m validation.run --coverage` runs) each trial is instead fitted as
`fit.py` fits it: the model's fast variant (participant effects integrated out) through its fused
log density (inference/kernels.py), compiled once and given each trial's context array
(validation/swap.FusedRefit; checked against the graph when first compiled). fast=False fits the
plain model's compiled graph with each trial's data swapped in.

Trial r is simulated from the r-th seed of validation/swap.replicate_seeds(seed) and fitted with the
r-th of replicate_seeds(seed + 1), in this process or on a Dask cluster (validation/parallel.py):
the table does not depend on where it ran.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data import TrialParameters
from models.design import TrialDesign

from .designs import design_of
from .parallel import describe, run_tasks
from .swap import FusedRefit, SwappableModel, cached_refit, replicate_seeds
from .trials import interval, trial_data

INTERVAL_PROB = 0.90


def simulate_designs(n: int, seed: int, params: TrialParameters | None = None):
    """n trials at the same true values, seeds from one seed."""
    base = params or TrialParameters()
    for s in replicate_seeds(seed, n):
        design, truth = design_of(base.with_(seed=s))
        yield s, design, truth


@dataclass(frozen=True)
class CoverageSetup:
    """What every coverage task needs besides its trials (sent once to each Dask worker)."""

    model_name: str
    template: TrialDesign  # the first trial's design: the model is built and compiled for it once
    params: TrialParameters
    draws: int
    tune: int
    chains: int
    cores: int
    fast: bool

    def refit_key(self) -> str:
        return json.dumps(["coverage", self.model_name, self.fast, self.template.checksum], sort_keys=True)


@dataclass(frozen=True)
class CoverageTask:
    trials: tuple[int, ...]
    trial_seeds: tuple[int, ...]
    fit_seeds: tuple[int, ...]


def _refit(setup: CoverageSetup):
    """The model compiled once per process: its fused log density (fast), or its compiled graph with swappable data."""
    from models import registry

    if setup.fast:
        return cached_refit(setup.refit_key(), lambda: FusedRefit.build(setup.model_name, setup.template))
    return cached_refit(setup.refit_key(), lambda: SwappableModel.build(registry.get(setup.model_name).build(setup.template).model))


def coverage_task(setup: CoverageSetup, task: CoverageTask) -> dict:
    """Simulate and fit each trial of `task`; {'rows', 'compile_s'}."""
    refit = _refit(setup)
    weeks = [setup.params.treatment_end, max(setup.params.weeks)]
    rows = []
    for r, trial_seed, fit_seed in zip(task.trials, task.trial_seeds, task.fit_seeds):
        design, truth = design_of(setup.params.with_(seed=trial_seed))
        t0 = time.perf_counter()
        data = design if setup.fast else trial_data(design, setup.template, refit)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # ArviZ's announcements of its next API
            idata = refit.fit(data, seed=fit_seed, draws=setup.draws, tune=setup.tune, chains=setup.chains, cores=setup.cores)
        fit_s = time.perf_counter() - t0
        div = int(idata.sample_stats["diverging"].sum())
        by_arm = truth.get("effect_by_arm_week") or {design.active_arms[0]: truth["nac_effect_by_week"]}
        for arm, w in ((arm, w) for arm in design.active_arms for w in weeks):
            d = idata.posterior["nac_effect"].sel(week=w, active_arm=arm).values
            true = float(by_arm[arm][str(w)])
            lo, hi = interval(d, INTERVAL_PROB)
            rows.append({"trial": r, "trial_seed": trial_seed, "arm": arm, "week": w, "true": true, "post_mean": float(d.mean()),
                         "post_sd": float(d.std(ddof=1)), "lower": lo, "upper": hi, "covered": bool(lo <= true <= hi),
                         "divergences": div, "fit_s": fit_s})
    return {"rows": rows, "compile_s": refit.compile_s}


def run_coverage(n_trials: int, seed: int, model_name: str = "treatment", draws: int = 500, tune: int = 400, chains: int = 2,
                 cores: int = 2, params: TrialParameters | None = None, log=None, progress=None,
                 fast: bool = False, chunk_size: int = 10, client=None) -> tuple[pd.DataFrame, dict]:
    """Coverage over `n_trials` simulated trials. fast=True: each fitted as fit.py fits it (the fast variant through
    its fused log density, compiled once: validation/swap.FusedRefit); else the plain model's compiled graph with the
    trial's data swapped in (validation/swap.SwappableModel). `client`: a Dask client to run the trials on (tasks of
    `chunk_size` trials; None: this process); the table is the same either way."""
    t_start = time.perf_counter()
    base = params or TrialParameters()
    trial_seeds = replicate_seeds(seed, n_trials)
    fit_seeds = replicate_seeds(seed + 1, n_trials)
    template, _ = design_of(base.with_(seed=trial_seeds[0]))
    setup = CoverageSetup(model_name, template, base, draws, tune, chains, cores, fast)
    tasks = [CoverageTask(tuple(range(a, min(n_trials, a + chunk_size))), tuple(trial_seeds[a : a + chunk_size]), tuple(fit_seeds[a : a + chunk_size]))
             for a in range(0, n_trials, chunk_size)]
    rows, compile_s = [], [0.0]
    where = describe(client)

    def collect(i, out):
        rows.extend(out["rows"])
        compile_s.append(out["compile_s"])
        if log:
            log(f"[coverage] {len({r['trial'] for r in rows})}/{n_trials} trials on {where}")
        if progress:
            progress(*_result(rows, model_name, n_trials, seed, draws, tune, chains, base, max(compile_s), t_start, fast, where))

    run_tasks(coverage_task, setup, tasks, client, collect)
    return _result(rows, model_name, n_trials, seed, draws, tune, chains, base, max(compile_s), t_start, fast, where)


def _result(rows, model_name, n_trials, seed, draws, tune, chains, base, compile_s, t_start, fast=False, where="this process"):
    table = pd.DataFrame(rows).sort_values(["trial"], kind="stable").reset_index(drop=True)
    info = {"model": model_name, "n_trials": int(table["trial"].nunique()), "target_trials": n_trials, "seed": seed, "draws": draws, "tune": tune, "chains": chains,
            "interval_prob": INTERVAL_PROB, "participants": base.n_participants, "compile_s": compile_s,
            "seconds": time.perf_counter() - t_start, "fit_path": "fused" if fast else "graph", "ran_on": where,
            "fit_s_per_trial": float(table.groupby("trial")["fit_s"].first().mean())}
    return table, info


def summarise(table: pd.DataFrame, prob: float = INTERVAL_PROB) -> pd.DataFrame:
    """Per active arm and week: coverage (with its binomial Monte Carlo SE), bias, RMSE, mean posterior SD, mean interval width."""
    rows = []
    for (arm, w), g in table.groupby(["arm", "week"], sort=False):
        n = len(g)
        cov = g["covered"].mean()
        err = g["post_mean"] - g["true"]
        rows.append({"arm": arm, "week": int(w), "trials": n, "true_effect": float(g["true"].iloc[0]), "nominal": prob, "coverage": float(cov),
                     "coverage_mcse": float(np.sqrt(prob * (1 - prob) / n)), "bias": float(err.mean()),
                     "bias_mcse": float(err.std(ddof=1) / np.sqrt(n)), "rmse": float(np.sqrt((err**2).mean())),
                     "mean_post_sd": float(g["post_sd"].mean()), "sd_of_post_means": float(g["post_mean"].std(ddof=1)),
                     "mean_width": float((g["upper"] - g["lower"]).mean()),
                     "divergent_trials": int(g["divergences"].gt(0).sum())})
    return pd.DataFrame(rows)
