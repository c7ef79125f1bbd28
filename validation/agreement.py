"""Agreement with the frequentist standard: the REML linear mixed model of statsmodels.

The `treatment` model and statsmodels' MixedLM are fitted to the same trial with the same mean
structure (site, t1, t2, t1 x arm, t2 x arm for each active arm; no arm main effect) and the same random effects
(correlated participant intercept and treatment-phase slope). Under weak priors (the NAC and time
priors widened tenfold) the posterior mean of the NAC effect at each week should match the REML
estimate to a small fraction of its standard error; the posterior SD should match the SE.
Site is a fixed factor in MixedLM and a sum-to-zero effect with a fixed prior scale in the Bayesian
model: both leave the within-participant NAC contrast unchanged.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

from models.design import TrialDesign

TOLERANCE_SE = 0.2  # |posterior mean - REML estimate| / REML SE must be at most this
SD_RATIO_RANGE = (0.8, 1.25)  # posterior SD / REML SE expected within this range
WEAK_FACTOR = 10.0  # prior SDs of the NAC and time effects multiplied by this


def weak_priors(design: TrialDesign) -> dict:
    from models.priors import scaled_defaults

    d = scaled_defaults(design.meta.score_min, design.meta.score_max)
    return {k: {"params": {"sigma": d[k].params["sigma"] * WEAK_FACTOR}, "reason": "weak prior for agreement with REML"}
            for k in ("nac_change", "time_change")}


def long_frame(design: TrialDesign) -> pd.DataFrame:
    """One row per observed visit; `arm_<a>` is 1 in the a-th active arm (a = 1, 2, ...)."""
    frame = pd.DataFrame({
        "y": design.y,
        "pid": design.obs_participant,
        "t1": design.t1,
        "t2": design.t2,
        "site": np.asarray(design.sites)[design.site_idx[design.obs_participant]],
    })
    indicator = design.arm_indicator()[design.obs_participant]
    for a in range(design.n_active):
        frame[f"arm_{a + 1}"] = indicator[:, a]
    return frame


def reml_nac_effect(design: TrialDesign) -> pd.DataFrame:
    """REML estimate and SE of each active arm - control difference at the end of treatment and the last week
    (columns arm, week, reml_estimate, reml_se)."""
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    df = long_frame(design)
    terms = []
    for a in range(1, design.n_active + 1):
        df[f"t1_arm_{a}"] = df["t1"] * df[f"arm_{a}"]
        df[f"t2_arm_{a}"] = df["t2"] * df[f"arm_{a}"]
        terms += [f"t1_arm_{a}", f"t2_arm_{a}"]
    model = smf.mixedlm("y ~ C(site) + t1 + t2 + " + " + ".join(terms), df, groups=df["pid"], re_formula="~t1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            fit = model.fit(reml=True, method=["lbfgs"])
        except ConvergenceWarning:
            fit = model.fit(reml=True, method=["powell", "lbfgs"])
    rows = []
    for a, arm in enumerate(design.active_arms, start=1):
        names = [f"t1_arm_{a}", f"t2_arm_{a}"]
        cov = fit.cov_params().loc[names, names].to_numpy()
        beta = fit.fe_params[names].to_numpy()
        for w, t1, t2 in zip(design.weeks, design.week_t1, design.week_t2):
            if w in (design.meta.treatment_end, design.meta.last_week):
                c = np.array([t1, t2])
                rows.append({"arm": arm, "week": int(w), "reml_estimate": float(c @ beta), "reml_se": float(np.sqrt(c @ cov @ c))})
    return pd.DataFrame(rows).drop_duplicates(["arm", "week"])


def compare(idata, reml: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in reml.iterrows():
        d = idata.posterior["nac_effect"].sel(week=int(r["week"]), active_arm=r["arm"]).values
        ess = _ess(d)
        mean, sd = float(d.mean()), float(d.std(ddof=1))
        rows.append({**r.to_dict(), "week": int(r["week"]), "post_mean": mean, "post_sd": sd, "mcse": sd / np.sqrt(ess),
                     "diff_in_se": (mean - r["reml_estimate"]) / r["reml_se"], "sd_ratio": sd / r["reml_se"]})
    out = pd.DataFrame(rows)
    out["agrees"] = (out["diff_in_se"].abs() <= TOLERANCE_SE) & out["sd_ratio"].between(*SD_RATIO_RANGE)
    return out


def _ess(draws: np.ndarray) -> float:
    import arviz as az

    return float(az.ess(np.asarray(draws).reshape(draws.shape[0], -1)))


def run_agreement(designs, seed: int, draws: int = 1000, tune: int = 500, chains: int = 2, cores: int = 2, log=None):
    """designs: iterable of (label, TrialDesign), all the size of the first. Returns (table, info)."""
    from models import registry

    from .swap import SwappableModel, replicate_seeds
    from .trials import trial_data

    t_start = time.perf_counter()
    sw = template = None
    tables = []
    designs = list(designs)
    seeds = replicate_seeds(seed, len(designs))
    for (label, design), s in zip(designs, seeds):
        if sw is None:
            template = design
            sw = SwappableModel.build(registry.get("treatment").build(design, priors=weak_priors(design)).model)
        t0 = time.perf_counter()
        idata = sw.fit(trial_data(design, template, sw), seed=s, draws=draws, tune=tune, chains=chains, cores=cores)
        reml = reml_nac_effect(design)
        t = compare(idata, reml)
        t.insert(0, "dataset", label)
        t["divergences"] = int(idata.sample_stats["diverging"].sum())
        tables.append(t)
        if log:
            log(f"[agreement] {label}: {time.perf_counter() - t0:.1f} s, max |diff| {t['diff_in_se'].abs().max():.3f} SE")
    info = {"model": "treatment", "comparator": "statsmodels MixedLM, REML, random intercept + t1 slope (correlated)",
            "n_datasets": len(designs), "seed": seed, "draws": draws, "tune": tune, "chains": chains,
            "tolerance_se": TOLERANCE_SE, "sd_ratio_range": list(SD_RATIO_RANGE), "prior_widening": WEAK_FACTOR,
            "compile_s": sw.compile_s if sw else 0.0, "seconds": time.perf_counter() - t_start}
    return pd.concat(tables, ignore_index=True), info
