"""Simulation-based calibration (Talts et al. 2018): parameters and data from the prior predictive,
a fit per replicate, the rank of each true value among thinned posterior draws.

If the fitted model is the model that generated the data and the sampler is right, each rank is
uniform on 0..L. Ranks piled at both ends mean posteriors too narrow (or a prior too narrow for the
simulation), a hump means posteriors too wide, a slope means bias. Uniformity is tested per
parameter with a chi-square test on equal-width rank bins and, because coarse bins have little
power against true values falling outside the posterior altogether, a binomial test of the number
of extreme ranks (0 or L; probability 2 / (L + 1) each when calibrated). A parameter is flagged
when either p-value is below P_FLAG.

The path checked is the one `fit.py` runs. The parameters and data are drawn from the prior
predictive of the model in its plain form (participant effects explicit: the generative model),
with every baseline biomarker value latent so that the markers and the scores are drawn together
(validation/designs.latent_markers); each replicate's data (visit scores, and the headline model's
baseline biomarkers at the template's observed entries) replace those of the template design, and the replicate is fitted by the model's fast variant (participant
effects integrated out, models/marginal.py) through its fused log density (inference/kernels*.py),
compiled once and given each replicate's context array (validation/swap.FusedRefit). The ranked
population parameters are variables of that fit's posterior.

The prior predictive is the model's generative model only when the model has no Potentials:
PyMC ignores Potentials when sampling the prior predictive, and the headline model adds one for
each biomarker value below a detection limit. SBC designs therefore have no censored values.

Replicates run as tasks in this process or on a Dask cluster (validation/parallel.py); replicate r's
data are the r-th prior predictive draw of the run's seed and its fit seed is the r-th of
validation/swap.replicate_seeds, so the ranks do not depend on where or in how many tasks it ran.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
from scipy import stats

from models.design import TrialDesign

from .designs import MARKER_DRAWS, latent_markers, simulated_arrays, with_data
from .parallel import describe, run_tasks
from .swap import FusedRefit, cached_refit, replicate_seeds

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
    """n prior and prior predictive draws, drawn one after another from one stream: the first k of n draws are the
    k draws of the same seed, so replicate r's parameters and data depend on the seed and r only."""
    from inference.marginal import vectorised_mode

    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # PyTensor's Python implementations: nothing to compile, the same numbers
        return pm.sample_prior_predictive(draws=n, random_seed=seed, compile_kwargs={"mode": vectorised_mode()})


@dataclass(frozen=True)
class SBCSetup:
    """What every SBC task needs besides its replicates (sent once to each Dask worker)."""

    name: str  # registry name of the fitted model
    design: TrialDesign  # the template: visits, arms, sites, missing-value pattern
    fit_priors: dict | None
    params: tuple[str, ...]
    draws: int
    tune: int
    chains: int
    cores: int
    n_rank_draws: int
    target_accept: float = 0.9

    def refit_key(self) -> str:
        return json.dumps(["sbc", self.name, self.design.checksum, self.design.n_participants, self.fit_priors], sort_keys=True, default=str)


@dataclass(frozen=True)
class SBCTask:
    """Replicates fitted by one task: their indices, fit seeds, simulated design arrays and true values."""

    replicates: tuple[int, ...]
    seeds: tuple[int, ...]
    arrays: tuple[dict, ...]  # validation.designs.with_data's y and z
    truth: tuple[dict, ...]  # {'parameter[coords]': true value}


def fused_refit(setup: SBCSetup):
    """The fitted model's fused log density, compiled once per process."""
    return cached_refit(setup.refit_key(), lambda: FusedRefit.build(setup.name, setup.design, setup.fit_priors))


def sbc_task(setup: SBCSetup, task: SBCTask) -> dict:
    """Fit each replicate of `task` on the fused path and rank its true values; {'rows', 'compile_s'}."""
    refit = fused_refit(setup)
    rows = []
    for r, seed, arrays, truth in zip(task.replicates, task.seeds, task.arrays, task.truth):
        design = with_data(setup.design, **arrays)
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # ArviZ's announcements of its next API
            idata = refit.fit(design, seed=seed, draws=setup.draws, tune=setup.tune, chains=setup.chains, cores=setup.cores,
                              target_accept=setup.target_accept)
        fit_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        rows += replicate_rows(r, truth, idata, setup.params, setup.chains, setup.n_rank_draws, fit_s, cpu_s)
    return {"rows": rows, "compile_s": refit.compile_s, "kernel": refit.kernel_version}


def replicate_rows(r: int, truth: dict, idata, params, chains: int, n_rank_draws: int, fit_s: float, cpu_s: float) -> list[dict]:
    """One row per ranked parameter of replicate r: its rank among the thinned posterior draws and summaries; fit_s
    the fit's wall time, fit_cpu_s the CPU time of its process meanwhile (both chains)."""
    post = parameter_values(idata.posterior, list(params))
    div = int(idata.sample_stats["diverging"].sum())
    rows = []
    for name, true in truth.items():
        draws_ = post[name]
        rows.append({
            "replicate": r, "parameter": name, "true": true,
            "rank": ranks_of(true, draws_, n_rank_draws),
            "post_mean": float(draws_.mean()), "post_sd": float(draws_.std(ddof=1)),
            "ess_bulk": float(az.ess(np.asarray(draws_).reshape(chains, -1))),
            "divergences": div, "fit_s": fit_s, "fit_cpu_s": cpu_s,
        })
    return rows


def run_sbc(
    label: str,
    name: str,
    design: TrialDesign,
    params: list[str],
    n_reps: int,
    seed: int,
    draws: int = 300,
    tune: int = 300,
    chains: int = 2,
    cores: int = 2,
    fit_priors: dict | None = None,
    sim_priors: dict | None = None,
    n_rank_draws: int = N_RANK_DRAWS,
    chunk_size: int = 10,
    client=None,
    log=None,
    progress=None,
) -> SBCResult:
    """SBC of model `name` (the registry's) on the fused path, as `fit.py` fits it.

    Parameters and data come from the prior predictive of the model itself (its plain form, participant effects
    explicit) built from `design` (its baseline biomarkers latent: validation/designs.latent_markers) with
    `sim_priors`; each replicate's data become a design (the template with its
    scores and biomarker values replaced, validation/designs.with_data) fitted by the model's fast variant with
    `fit_priors` through its fused log density, compiled once (validation/swap.FusedRefit). The same priors give
    the calibrated check; different ones a model the check must flag. `client`: a Dask client to run the
    replicates on (tasks of `chunk_size` replicates; None: this process); the ranks are the same either way.
    """
    from models import registry

    t_start = time.perf_counter()
    sim = registry.get(name).build(latent_markers(design), priors=sim_priors)
    sim_seed, *fit_seeds = replicate_seeds(seed, n_reps + 1)
    prior = prior_draws(sim.model, n_reps, sim_seed)
    truth = identifiable(parameter_values(prior.prior, params))
    observed = [v.name for v in sim.model.observed_RVs]
    latent = [v for v in MARKER_DRAWS if v in prior.prior]

    def draw(r):
        return {**{v: prior.prior_predictive[v].values[0, r] for v in observed}, **{v: prior.prior[v].values[0, r] for v in latent}}

    setup = SBCSetup(name, design, fit_priors, tuple(params), draws, tune, chains, cores, n_rank_draws)
    tasks = []
    for start in range(0, n_reps, chunk_size):
        reps = range(start, min(n_reps, start + chunk_size))
        tasks.append(SBCTask(
            tuple(reps), tuple(fit_seeds[r] for r in reps),
            tuple(simulated_arrays(sim, draw(r), design) for r in reps),
            tuple({k: float(np.asarray(v).reshape(-1)[r]) for k, v in truth.items()} for r in reps),
        ))
    rows, compile_s, kernels = [], [0.0], set()
    where = describe(client)
    if log:
        log(f"[{label}] {n_reps} replicates in {len(tasks)} tasks on {where}")

    def collect(i, out):
        rows.extend(out["rows"])
        compile_s.append(out["compile_s"])
        kernels.add(out["kernel"])
        if log:
            fits = [r["fit_s"] for r in out["rows"] if r["parameter"] == out["rows"][0]["parameter"]]
            n_done = len({r["replicate"] for r in rows})
            log(f"[{label}] {n_done}/{n_reps} replicates ({len(tasks[i].replicates)} in {sum(fits):.1f} s of fitting)")
        if progress:
            progress(_result(label, rows, n_rank_draws, n_reps, seed, draws, tune, chains, max(compile_s), t_start, where, kernels))

    run_tasks(sbc_task, setup, tasks, client, collect)
    return _result(label, rows, n_rank_draws, n_reps, seed, draws, tune, chains, max(compile_s), t_start, where, kernels)


def _result(label, rows, n_rank_draws, n_reps, seed, draws, tune, chains, compile_s, t_start, where="this process",
            kernels=()) -> SBCResult:
    ranks = pd.DataFrame(rows).sort_values(["replicate"], kind="stable").reset_index(drop=True)
    per_rep = ranks.groupby("replicate")[["fit_s", "fit_cpu_s"]].first()
    settings = {"n_reps": int(ranks["replicate"].nunique()), "target_reps": n_reps, "seed": seed, "draws": draws, "tune": tune,
                "chains": chains, "n_rank_draws": n_rank_draws, "fit_path": "fused", "ran_on": where,
                "fit_s_per_replicate": float(per_rep["fit_s"].mean()), "fit_cpu_s_per_replicate": float(per_rep["fit_cpu_s"].mean()),
                "fused_kernel": sorted(kernels)}
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
