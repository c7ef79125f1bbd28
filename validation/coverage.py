"""Frequentist coverage of the posterior for each active arm's effect: many trials at fixed true values.

Trials come from the default generator (data.synthetic, 252 participants, the published design)
with different seeds and the same parameters; each is written and loaded through the documented
format and fitted by the `treatment` model compiled once. The generator is not the model: it
screens on the entry score, rounds and clips scores, and has an IL-6 moderation the `treatment`
model does not include, so this checks the whole analysis, not only the sampler.

With fast=True each trial is instead fitted as `fit.py` fits it: the model's fast variant (participant
effects integrated out) through inference.compile (the fused log density, checked against the graph
for each trial). No compile per trial, so a handful of trials costs seconds; for hundreds of trials
the compiled-once model is cheaper per fit.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from data import TrialParameters

from .designs import design_of
from .swap import SwappableModel, replicate_seeds
from .trials import interval, trial_data

INTERVAL_PROB = 0.90


def simulate_designs(n: int, seed: int, params: TrialParameters | None = None):
    """n trials at the same true values, seeds from one seed."""
    base = params or TrialParameters()
    for s in replicate_seeds(seed, n):
        design, truth = design_of(base.with_(seed=s))
        yield s, design, truth


def _fit_fast(built, *, seed: int, draws: int, tune: int, chains: int, cores: int, target_accept: float = 0.9):
    """Posterior draws of a built model as fit.py samples it: its fast variant, when it has one, through inference.compile."""
    import nutpie

    from inference.compile import compile_nutpie

    compiled, _ = compile_nutpie(built.fast_variant() if built.fast_variant is not None else built)
    return nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=int(seed),
                         target_accept=target_accept, progress_bar=False, save_warmup=False)


def run_coverage(n_trials: int, seed: int, model_name: str = "treatment", draws: int = 500, tune: int = 400, chains: int = 2,
                 cores: int = 2, params: TrialParameters | None = None, log=None, progress=None,
                 fast: bool = False) -> tuple[pd.DataFrame, dict]:
    from models import registry

    t_start = time.perf_counter()
    base = params or TrialParameters()
    weeks = [base.treatment_end, max(base.weeks)]
    designs = simulate_designs(n_trials, seed, base)
    fit_seeds = replicate_seeds(seed + 1, n_trials)
    rows, sw, template = [], None, None
    for r, (trial_seed, design, truth) in enumerate(designs):
        t0 = time.perf_counter()
        if fast:
            idata = _fit_fast(registry.get(model_name).build(design), seed=fit_seeds[r], draws=draws, tune=tune, chains=chains, cores=cores)
        else:
            if sw is None:
                template = design
                sw = SwappableModel.build(registry.get(model_name).build(design).model)
                t0 = time.perf_counter()
            idata = sw.fit(trial_data(design, template, sw), seed=fit_seeds[r], draws=draws, tune=tune, chains=chains, cores=cores)
        div = int(idata.sample_stats["diverging"].sum())
        by_arm = truth.get("effect_by_arm_week") or {design.active_arms[0]: truth["nac_effect_by_week"]}
        for arm, w in ((arm, w) for arm in design.active_arms for w in weeks):
            d = idata.posterior["nac_effect"].sel(week=w, active_arm=arm).values
            true = float(by_arm[arm][str(w)])
            lo, hi = interval(d, INTERVAL_PROB)
            rows.append({"trial": r, "trial_seed": trial_seed, "arm": arm, "week": w, "true": true, "post_mean": float(d.mean()),
                         "post_sd": float(d.std(ddof=1)), "lower": lo, "upper": hi, "covered": bool(lo <= true <= hi),
                         "divergences": div, "fit_s": time.perf_counter() - t0})
        if log:
            log(f"[coverage] trial {r + 1}/{n_trials}: {time.perf_counter() - t0:.1f} s, {div} divergences")
        if progress:
            progress(*_result(rows, model_name, n_trials, seed, draws, tune, chains, base, sw.compile_s if sw else 0.0, t_start))
    return _result(rows, model_name, n_trials, seed, draws, tune, chains, base, sw.compile_s if sw else 0.0, t_start)


def _result(rows, model_name, n_trials, seed, draws, tune, chains, base, compile_s, t_start):
    table = pd.DataFrame(rows)
    info = {"model": model_name, "n_trials": int(table["trial"].nunique()), "target_trials": n_trials, "seed": seed, "draws": draws, "tune": tune, "chains": chains,
            "interval_prob": INTERVAL_PROB, "participants": base.n_participants, "compile_s": compile_s,
            "seconds": time.perf_counter() - t_start}
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
