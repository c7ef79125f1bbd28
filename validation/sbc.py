"""Simulation-based calibration (Talts et al. 2018): parameters and data from the prior predictive,
a fit per replicate, the rank of each true value among thinned posterior draws.

If the fitted model is the model that generated the data and the sampler is right, each rank is
uniform on 0..L. Ranks piled at both ends mean posteriors too narrow (or a prior too narrow for the
simulation), a hump means posteriors too wide, a slope means bias. Uniformity is tested per
parameter with a chi-square test on equal-width rank bins and, because coarse bins have little
power against true values falling outside the posterior altogether, a binomial test of the number
of extreme ranks (0 or L; probability 2 / (L + 1) each when calibrated). A parameter is flagged
when either p-value is below P_FLAG.

The prior predictive is the model's generative model only when the model has no Potentials:
PyMC ignores Potentials when sampling the prior predictive, and the headline model adds one for
each biomarker value below a detection limit. SBC designs therefore have no censored values.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
from scipy import stats

from .swap import SwappableModel, observed_data_name, replicate_seeds

N_RANK_DRAWS = 99  # thinned posterior draws per replicate: ranks take L + 1 = 100 values
P_FLAG = 0.01  # a parameter whose uniformity p-value falls below this is flagged


@dataclass
class SBCResult:
    label: str
    ranks: pd.DataFrame  # one row per replicate x parameter
    n_rank_draws: int
    settings: dict
    compile_s: float
    seconds: float
    uniformity: pd.DataFrame = field(default=None)


def parameter_values(dataset, var_names: list[str]) -> dict[str, np.ndarray]:
    """{'var[coord]': array over (chain, draw) or draws} for every element of each variable."""
    out = {}
    for var in var_names:
        da = dataset[var]
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        if not extra:
            out[var] = da.values
            continue
        stacked = da.stack(_element=extra)
        for i, key in enumerate(stacked["_element"].values):
            key = key if isinstance(key, tuple) else (key,)
            out[f"{var}[{','.join(str(k) for k in key)}]"] = stacked.values[..., i]
    return out


def identifiable(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop elements that are constant over the prior (a correlation matrix's diagonal) or mirror an earlier one."""
    out = {}
    for name, v in values.items():
        flat = np.asarray(v).reshape(-1)
        # tolerances: an LKJ diagonal comes out of a Cholesky product as 1 +- 1e-16, not exactly 1
        if np.ptp(flat) < 1e-9 or any(np.allclose(flat, np.asarray(w).reshape(-1), rtol=0, atol=1e-9) for w in out.values()):
            continue
        out[name] = v
    return out


def ranks_of(truth: float, draws: np.ndarray, n_rank_draws: int = N_RANK_DRAWS) -> int:
    """Rank of truth among n_rank_draws draws thinned evenly from all chains (reduces autocorrelation)."""
    flat = np.asarray(draws).reshape(-1)
    idx = np.round(np.linspace(0, flat.size - 1, n_rank_draws)).astype(int)
    return int(np.sum(flat[idx] < truth))


def prior_draws(model: pm.Model, n: int, seed: int):
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pm.sample_prior_predictive(draws=n, random_seed=seed)


def run_sbc(
    label: str,
    fit_model: pm.Model,
    sim_model: pm.Model,
    params: list[str],
    n_reps: int,
    seed: int,
    draws: int = 300,
    tune: int = 300,
    chains: int = 2,
    cores: int = 2,
    n_rank_draws: int = N_RANK_DRAWS,
    swappable: SwappableModel | None = None,
    log=None,
    progress=None,
) -> SBCResult:
    """SBC of `fit_model` on data from `sim_model`'s prior predictive (the same model unless testing a wrong one)."""
    t_start = time.perf_counter()
    sw = swappable or SwappableModel.build(fit_model)
    sim_seed, *fit_seeds = replicate_seeds(seed, n_reps + 1)
    prior = prior_draws(sim_model, n_reps, sim_seed)
    truth = identifiable(parameter_values(prior.prior, params))
    observed = [v.name for v in fit_model.observed_RVs]
    rows = []
    for r in range(n_reps):
        data = {observed_data_name(v): prior.prior_predictive[v].values[0, r] for v in observed}
        t0 = time.perf_counter()
        idata = sw.fit(data, seed=fit_seeds[r], draws=draws, tune=tune, chains=chains, cores=cores)
        fit_s = time.perf_counter() - t0
        post = parameter_values(idata.posterior, params)
        div = int(idata.sample_stats["diverging"].sum())
        for name, true_values in truth.items():
            draws_ = post[name]
            true = float(true_values.reshape(-1)[r])
            rows.append({
                "replicate": r, "parameter": name, "true": true,
                "rank": ranks_of(true, draws_, n_rank_draws),
                "post_mean": float(draws_.mean()), "post_sd": float(draws_.std(ddof=1)),
                "ess_bulk": float(az.ess(np.asarray(draws_).reshape(chains, -1))),
                "divergences": div, "fit_s": fit_s,
            })
        if log:
            log(f"[{label}] replicate {r + 1}/{n_reps}: {fit_s:.1f} s, {div} divergences")
        if progress:
            progress(_result(label, rows, n_rank_draws, n_reps, seed, draws, tune, chains, sw.compile_s, t_start))
    return _result(label, rows, n_rank_draws, n_reps, seed, draws, tune, chains, sw.compile_s, t_start)


def _result(label, rows, n_rank_draws, n_reps, seed, draws, tune, chains, compile_s, t_start) -> SBCResult:
    ranks = pd.DataFrame(rows)
    settings = {"n_reps": int(ranks["replicate"].nunique()), "target_reps": n_reps, "seed": seed, "draws": draws, "tune": tune,
                "chains": chains, "n_rank_draws": n_rank_draws}
    res = SBCResult(label, ranks, n_rank_draws, settings, compile_s, time.perf_counter() - t_start)
    res.uniformity = uniformity(ranks, n_rank_draws)
    return res


def default_bins(n_reps: int, n_rank_draws: int = N_RANK_DRAWS) -> int:
    """Equal-width bins with about 5 or more expected replicates each (at most 10), dividing L + 1 evenly if possible."""
    target = max(2, min(10, n_reps // 5))
    for b in range(target, 1, -1):
        if (n_rank_draws + 1) % b == 0:
            return b
    return target


def bin_counts(ranks: np.ndarray, n_rank_draws: int, bins: int) -> np.ndarray:
    idx = (np.asarray(ranks) * bins) // (n_rank_draws + 1)
    return np.bincount(idx, minlength=bins)


def uniformity(ranks: pd.DataFrame, n_rank_draws: int = N_RANK_DRAWS, bins: int | None = None) -> pd.DataFrame:
    """Per parameter: chi-square uniformity test of the ranks, mean z-score and posterior contraction."""
    rows = []
    for name, g in ranks.groupby("parameter", sort=False):
        b = bins or default_bins(len(g), n_rank_draws)
        counts = bin_counts(g["rank"].to_numpy(), n_rank_draws, b)
        chi2, p = stats.chisquare(counts)
        z = (g["post_mean"] - g["true"]) / g["post_sd"]
        n_extreme = int(np.sum((g["rank"] == 0) | (g["rank"] == n_rank_draws)))
        frac_extreme = n_extreme / len(g)
        # truth outside every posterior draw: probability 2 / (L + 1) per replicate when calibrated
        p_extreme = float(stats.binom.sf(n_extreme - 1, len(g), 2 / (n_rank_draws + 1)))
        rows.append({
            "parameter": name, "replicates": len(g), "bins": b, "chi2": float(chi2), "p_value": float(p),
            "p_extreme": p_extreme, "flagged": bool(p < P_FLAG or p_extreme < P_FLAG), "mean_rank_frac": float(g["rank"].mean() / n_rank_draws),
            "extreme_rank_share": frac_extreme, "mean_z": float(z.mean()), "sd_z": float(z.std(ddof=1)),
            "min_ess_bulk": float(g["ess_bulk"].min()), "divergent_replicates": int((g["divergences"] > 0).sum()),
        })
    return pd.DataFrame(rows)


def rank_plot(result: SBCResult, path) -> None:
    """Rank histograms per parameter with the 99% band of a uniform histogram (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.uniformity["parameter"])
    ncol = min(4, len(names))
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    for ax, (_, row) in zip(axes.ravel(), result.uniformity.iterrows()):
        g = result.ranks[result.ranks["parameter"] == row["parameter"]]
        b = int(row["bins"])
        counts = bin_counts(g["rank"].to_numpy(), result.n_rank_draws, b)
        n = len(g)
        lo, hi = stats.binom.ppf([0.005, 0.995], n, 1 / b)
        ax.axhspan(lo, hi, color="0.85")
        ax.axhline(n / b, color="0.5", lw=0.8)
        ax.bar(np.arange(b), counts, width=0.9, color="tab:blue")
        ax.set_title(f"{row['parameter']}\np = {row['p_value']:.3f}", fontsize=8)
        ax.set_xticks([])
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(f"SBC rank histograms: {result.label} ({len(result.ranks['replicate'].unique())} replicates)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
