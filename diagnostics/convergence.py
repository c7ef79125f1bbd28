"""Convergence verdict of a fit: pure functions of InferenceData returning tables.

The thresholds are named constants used by the code, the tests and docs/diagnostics.md alike.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from arviz.utils import _var_names

from . import mcmc_stats

RHAT_MAX = 1.01  # split-R-hat (rank-normalised) at most this
ESS_BULK_MIN = 400  # bulk effective sample size at least this
ESS_TAIL_MIN = 400  # tail effective sample size at least this
DIVERGENCES_MAX = 0  # any divergence fails the verdict
MCSE_SD_RATIO_MAX = 0.1  # Monte Carlo SE of the mean at most this fraction of the posterior SD
TREEDEPTH_SATURATED_MAX = 0.01  # at most this fraction of draws may hit the sampler's maximum tree depth
EBFMI_MIN = 0.3  # energy Bayesian fraction of missing information per chain at least this
DEFAULT_MAX_TREEDEPTH = 10  # PyMC's and nutpie's default maximum tree depth (used when the fit does not record it)

# sample_stats names differ between samplers: (PyMC, nutpie) spellings of the same statistic
DEPTH_NAMES = ("tree_depth", "depth")
SATURATION_NAMES = ("reached_max_treedepth", "maxdepth_reached")
FLAGS = ("rhat", "ess", "mcse", "divergences", "treedepth", "ebfmi")  # what a verdict can flag


@dataclass
class Verdict:
    ok: bool
    table: pd.DataFrame  # one row per parameter judged: r_hat, ess_bulk, ess_tail, mcse_mean
    divergences: int
    draws: int
    messages: list[str]
    flags: set[str] = field(default_factory=set)  # subset of FLAGS that failed
    treedepth_saturated: float = float("nan")  # fraction of draws at the maximum tree depth
    ebfmi: list[float] = field(default_factory=list)  # per chain
    max_mcse_ratio: float = float("nan")  # largest mcse_mean / sd over parameters
    stats: pd.DataFrame | None = None  # every scalar judged, unfiltered (`convergence_stats`): reused, never recomputed
    scope: str = ""  # which parameters were judged (`judged_posterior`), in words
    population_only: bool = False  # judged on the population parameters alone (fast path: participant-level values drawn after)

    def text(self) -> str:
        head = "PASS" if self.ok else "FAIL"
        lines = [
            f"convergence: {head}  (R-hat <= {RHAT_MAX}, bulk and tail ESS >= {ESS_BULK_MIN}, divergences = {DIVERGENCES_MAX}, "
            f"MCSE/SD <= {MCSE_SD_RATIO_MAX}, max-tree-depth draws <= {TREEDEPTH_SATURATED_MAX:.0%}, E-BFMI >= {EBFMI_MIN})",
            *([f"  judged: {self.scope}"] if self.scope else []),
            f"  worst R-hat {_extreme(self.table, 'r_hat', max)}, min bulk ESS {_extreme(self.table, 'ess_bulk', min, '.0f')}, "
            f"min tail ESS {_extreme(self.table, 'ess_tail', min, '.0f')}, divergences {self.divergences} of {self.draws} draws",
            f"  max MCSE/SD {self.max_mcse_ratio:.3f}, draws at max tree depth {self.treedepth_saturated:.1%}, "
            f"E-BFMI per chain {', '.join(f'{b:.2f}' for b in self.ebfmi) or 'n/a (no energy recorded)'}",
        ]
        lines += [f"  - {m}" for m in self.messages]
        return "\n".join(lines)


def _extreme(table: pd.DataFrame, column: str, pick, fmt: str = ".3f") -> str:
    """'1.004 (name)' for the largest/smallest value of a column, 'n/a' when it has none (e.g. R-hat of one chain)."""
    values = table[column].dropna() if column in table else pd.Series(dtype=float)
    if values.empty:
        return "n/a"
    name = values.idxmax() if pick is max else values.idxmin()
    return f"{values[name]:{fmt}} ({name})"


def sampled_variables(idata: az.InferenceData, free: list[str] | None = None) -> list[str]:
    """Variables judged: the free parameters (given) or every posterior variable."""
    names = list(idata.posterior.data_vars)
    return [v for v in names if free is None or v in free]


RECOVERED_VARS = ("participant_raw", "participant_effects")  # fast path: drawn after sampling (inference/marginal.py)
MISSING_MARKERS = "marker_missing_std"  # fast path: some entries sampled (latent), the others drawn after sampling


def fast_path(idata: az.InferenceData) -> bool:
    """Whether the fit sampled the model with its participant effects integrated out (inference.sampling, fast path)."""
    return idata.posterior.attrs.get("fit_path") == "marginal"


def _latent_markers(idata: az.InferenceData, design) -> np.ndarray | None:
    """Which entries of a fast-path fit's `marker_missing_std` the sampler drew (models.marker_block.latent_missing),
    from `design` or the dataset saved with the fit; None when neither tells (then every entry is judged)."""
    from models.marker_block import latent_missing

    if design is None:
        from inference.storage import DATA_GROUP, saved_dataset
        from models import build_design

        if DATA_GROUP not in idata.groups():
            return None
        design = build_design(saved_dataset(idata))
    md = design.baseline
    if md is None or idata.posterior[MISSING_MARKERS].size // (idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]) != md.n_missing:
        return None
    return latent_missing(md)


def judged_posterior(idata: az.InferenceData, design=None) -> tuple[xr.Dataset, str]:
    """The posterior variables the verdict judges, and in words which.

    Plain path: every variable. Fast path (participant effects integrated out while sampling, then drawn for each
    posterior draw from their exact conditional posterior given it): the sampled population parameters and the
    quantities derived from them, which the estimates use; the participant effects (`RECOVERED_VARS`) and the missing
    biomarker values drawn with them are exact conditional draws given each population draw, so they inherit its
    mixing and are not judged. The missing biomarker values the sampler drew itself (those of participants with a
    censored marker) are judged. design: the fit's TrialDesign (else read from the dataset saved with the fit)."""
    post = idata.posterior
    if not fast_path(idata):
        return post, "every parameter (participant-level included)"
    post = post.drop_vars([v for v in RECOVERED_VARS if v in post.data_vars])
    drawn = ["the participant effects"]
    if MISSING_MARKERS in post.data_vars:
        latent = _latent_markers(idata, design)
        if latent is not None:
            dim = [d for d in post[MISSING_MARKERS].dims if d not in ("chain", "draw")][0]
            post = post.isel({dim: latent}) if len(latent) else post.drop_vars(MISSING_MARKERS)
            drawn.append("the missing biomarker values integrated out with them")
    return post, ("the population parameters and the quantities derived from them (fast path: "
                  f"{' and '.join(drawn)}, drawn exactly from their conditional posterior given each draw, inherit its mixing)")


@contextmanager
def one_chain_quiet():
    """ArviZ logs a shape warning per parameter when R-hat meets one chain; the verdict says it once instead."""
    arviz_log = logging.getLogger("arviz")
    level = arviz_log.level
    arviz_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        arviz_log.setLevel(level)


def scalar_draws(posterior, var_names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Every scalar of the selected posterior variables stacked: draws (chain, draw, n) and labels.

    Variables, their order and the labels are az.summary's: `var_names` as ArviZ reads it (None for
    all, `~name` to exclude), the elements of each variable in C order over its other dims, labelled
    `name[coord, coord]` with the coordinate values (`nac_effect[12]`, `visit_corr[2, 4]`).
    """
    names = _var_names(var_names, posterior)
    data = posterior if names is None else posterior[names]
    blocks = []
    for da in data.data_vars.values():
        values = da.transpose("chain", "draw", ...).values
        blocks.append(values.reshape(values.shape[0], values.shape[1], -1))
    labels = scalar_labels(data)
    if not blocks:
        chains, draws = posterior.sizes.get("chain", 1), posterior.sizes.get("draw", 0)
        return np.empty((chains, draws, 0)), labels
    return np.concatenate(blocks, axis=2), labels


def scalar_labels(posterior, var_names: list[str] | None = None) -> list[str]:
    """The labels `scalar_draws` gives the scalars of these variables (`name[coord, coord]`), without reading draws."""
    names = _var_names(var_names, posterior)
    labels = []
    for name, da in (posterior if names is None else posterior[names]).data_vars.items():
        dims = [d for d in da.dims if d not in ("chain", "draw")]
        if not dims:
            labels.append(name)
            continue
        coords = [list(da[d].values) for d in dims]
        labels += [f"{name}[{', '.join(f'{v}' for v in sel)}]" for sel in itertools.product(*coords)]
    return labels


STATS_COLUMNS = (*mcmc_stats.DIAGNOSTICS, "ess_mean", "mean", "sd")  # `convergence_stats`


def convergence_stats(idata: az.InferenceData, var_names: list[str] | None = None, posterior: xr.Dataset | None = None) -> pd.DataFrame:
    """Every scalar of the selected posterior variables (`scalar_draws`), unfiltered: R-hat, bulk/tail ESS and MCSE
    (as az.summary(kind="diagnostics", round_to="none")), the ESS for the mean ('ess_mean', az.ess(method="mean"):
    PSIS's relative efficiency, diagnostics.loo), the posterior mean and SD (ddof=1); all parameters at once
    (mcmc_stats). The verdict's table, summary.csv and r_eff are read from it: computed once per fit.
    posterior: a selection of idata's posterior to read instead of the whole (`judged_posterior`)."""
    draws, labels = scalar_draws(idata.posterior if posterior is None else posterior, var_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        diag = mcmc_stats.diagnostics(draws)
        diag["mean"] = draws.reshape(-1, draws.shape[2]).mean(axis=0) if draws.size else np.full(draws.shape[2], np.nan)
        diag["sd"] = mcmc_stats.posterior_sd(draws)
    return pd.DataFrame(diag, index=labels, columns=list(STATS_COLUMNS))


def convergence_table(idata: az.InferenceData, var_names: list[str] | None = None, stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """R-hat, bulk/tail ESS and MCSE per scalar parameter (as az.summary(kind="diagnostics", round_to="none")),
    plus mcse_mean / posterior SD, computed for all parameters at once (mcmc_stats). Unrounded: the
    verdict compares the exact values with its thresholds. stats: `convergence_stats` of the same variables."""
    stats = convergence_stats(idata, var_names) if stats is None else stats
    summ = stats[list(mcmc_stats.DIAGNOSTICS)]
    sd = stats["sd"]
    # constants (e.g. the effect at baseline, fixed at 0) have no meaningful diagnostics; with one chain
    # R-hat is undefined for every parameter (it compares chains) while ESS and MCSE are not
    one_chain = idata.posterior.sizes.get("chain", 1) < 2
    keep = (summ["ess_bulk"].notna() & (sd > 0)) if one_chain else summ["r_hat"].notna()
    summ = summ[keep.to_numpy()].copy()
    sd = sd[keep.to_numpy()]
    summ["mcse_sd_ratio"] = summ["mcse_mean"] / sd.where(sd > 0)
    return summ


SUMMARY_HDI_PROB = 0.94  # summary.csv's interval
SUMMARY_DECIMALS = {"ess_bulk": 0, "ess_tail": 0, "r_hat": 2}  # az.summary's rounding; every other column 3


def summary_names(posterior) -> list[str]:
    """The variables of summary.csv: the population-level ones (not per participant, not biomarker values)."""
    return [v for v in posterior.data_vars if v not in ("participant_raw", "participant_effects")
            and not v.startswith("marker_missing") and not v.startswith("marker_censored")]


def hdi_columns(draws: np.ndarray, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """The narrowest interval holding `prob` of the draws of each column of `draws` (draws, n), as az.hdi
    (unimodal): of the intervals between the i-th and (i + floor(prob S))-th sorted draws, the first narrowest."""
    ordered = np.sort(draws, axis=0)
    size = ordered.shape[0]
    inc = int(np.floor(prob * size))
    width = ordered[inc:] - ordered[: size - inc]
    lo = np.argmin(width, axis=0)
    cols = np.arange(ordered.shape[1])
    return ordered[lo, cols], ordered[lo + inc, cols]


def parameter_summary(idata: az.InferenceData, stats: pd.DataFrame | None = None, var_names: list[str] | None = None,
                      hdi_prob: float = SUMMARY_HDI_PROB) -> pd.DataFrame:
    """az.summary(idata, var_names, hdi_prob) (summary.csv): mean, sd, the HDI, mcse_mean, mcse_sd, ess_bulk, ess_tail,
    r_hat, rounded as ArviZ rounds them, with the convergence statistics read from `stats` (the verdict's
    `convergence_stats`, covering at least these variables) instead of computed again. var_names: `summary_names`."""
    post = idata.posterior
    names = summary_names(post) if var_names is None else list(var_names)
    draws, labels = scalar_draws(post, names)
    if stats is None or not set(labels) <= set(stats.index):
        stats = convergence_stats(idata, names)
    rows = stats.loc[labels]
    lo, hi = hdi_columns(draws.reshape(-1, draws.shape[2]), hdi_prob) if draws.size else (np.array([]), np.array([]))
    alpha = 1 - hdi_prob
    table = pd.DataFrame({
        "mean": rows["mean"].to_numpy(), "sd": rows["sd"].to_numpy(),
        f"hdi_{100 * alpha / 2:g}%": lo, f"hdi_{100 * (1 - alpha / 2):g}%": hi,
        **{c: rows[c].to_numpy() for c in mcmc_stats.DIAGNOSTICS},
    }, index=labels)
    return table.round({c: SUMMARY_DECIMALS.get(c, 3) for c in table.columns})


def _stat(stats, names):
    for name in names:
        if name in stats:
            return stats[name]
    return None


def treedepth_saturation(idata: az.InferenceData, max_treedepth: int | None = None) -> float:
    """Fraction of draws whose trajectory stopped at the maximum tree depth (NaN if not recorded).

    Uses the sampler's own flag (PyMC `reached_max_treedepth`, nutpie `maxdepth_reached`) when
    present, else compares the depth (`tree_depth` / `depth`) with `max_treedepth`.
    """
    stats = idata.sample_stats
    flag = _stat(stats, SATURATION_NAMES)
    if flag is not None:
        return float(np.asarray(flag).astype(bool).mean())
    depth = _stat(stats, DEPTH_NAMES)
    if depth is None:
        return float("nan")
    limit = max_treedepth or int(stats.attrs.get("max_treedepth", DEFAULT_MAX_TREEDEPTH))
    return float((np.asarray(depth) >= limit).mean())


def ebfmi(idata: az.InferenceData) -> np.ndarray:
    """E-BFMI per chain from the Hamiltonian energy (both samplers call it `energy`); empty if absent."""
    stats = idata.sample_stats
    if "energy" not in stats:
        return np.array([])
    energy = np.asarray(stats["energy"].transpose("chain", "draw"), dtype=float)
    if energy.shape[1] < 3:
        return np.array([])
    # Stan's definition: sum_n (E_n - E_{n-1})^2 / sum_n (E_n - mean E)^2
    return np.square(np.diff(energy, axis=1)).sum(axis=1) / np.square(energy - energy.mean(axis=1, keepdims=True)).sum(axis=1)


def verdict(idata: az.InferenceData, var_names: list[str] | None = None, design=None) -> Verdict:
    """The convergence verdict over `var_names`, by default over `judged_posterior` (design: the fit's TrialDesign, which
    tells a fast-path fit's sampled missing biomarker values from the drawn ones; else read from the saved dataset)."""
    post, scope = judged_posterior(idata, design) if var_names is None else (idata.posterior, "")
    scalars = convergence_stats(idata, var_names, posterior=post)
    table = convergence_table(idata, var_names, scalars)
    stats = idata.sample_stats
    div = int(stats["diverging"].sum()) if "diverging" in stats else 0
    draws = int(np.prod([stats.sizes[d] for d in ("chain", "draw")]))
    msgs = []
    chains = int(stats.sizes.get("chain", 1))
    bad_rhat = table.index[table["r_hat"] > RHAT_MAX]
    if len(bad_rhat):
        msgs.append(f"R-hat above {RHAT_MAX} for {len(bad_rhat)} parameter(s), e.g. {list(bad_rhat[:3])}: chains disagree; run longer (--tune, --draws)")
    if chains < 2:
        bad_rhat = table.index  # not assessed is not passed
        msgs.append("R-hat not available: it compares chains and this fit has one, so convergence cannot be confirmed; use --chains 2 or more (4 is usual)")
    low_bulk = table.index[table["ess_bulk"] < ESS_BULK_MIN]
    low_tail = table.index[table["ess_tail"] < ESS_TAIL_MIN]
    if len(low_bulk) or len(low_tail):
        msgs.append(
            f"ESS below {ESS_BULK_MIN} for {len(set(low_bulk) | set(low_tail))} parameter(s), e.g. {list((list(low_bulk) + list(low_tail))[:3])}: increase --draws"
        )
    flags = set()
    if len(bad_rhat):
        flags.add("rhat")
    if len(low_bulk) or len(low_tail):
        flags.add("ess")
    if div > DIVERGENCES_MAX:
        msgs.append(f"{div} divergent transitions: the posterior has regions the sampler cannot explore; raise --target-accept (e.g. 0.95, 0.99), tune longer (--tune), or try the robust model (--likelihood student)")
        flags.add("divergences")
    ratio = table["mcse_sd_ratio"]
    bad_mcse = table.index[ratio > MCSE_SD_RATIO_MAX]
    if len(bad_mcse):
        msgs.append(f"Monte Carlo SE above {MCSE_SD_RATIO_MAX} posterior SD for {len(bad_mcse)} parameter(s), e.g. {list(bad_mcse[:3])}: increase --draws")
        flags.add("mcse")
    saturated = treedepth_saturation(idata)
    if saturated > TREEDEPTH_SATURATED_MAX:
        msgs.append(
            f"{saturated:.1%} of draws hit the maximum tree depth (more than {TREEDEPTH_SATURATED_MAX:.0%}): "
            "trajectories are cut short; the posterior is badly scaled or strongly correlated (reparameterise)"
        )
        flags.add("treedepth")
    bfmi = ebfmi(idata)
    low = [int(c) for c in np.nonzero(bfmi < EBFMI_MIN)[0]]
    if low:
        msgs.append(f"E-BFMI below {EBFMI_MIN} in chain(s) {low}: the sampler cannot follow the energy distribution (heavy tails or a funnel); reparameterise")
        flags.add("ebfmi")
    return Verdict(
        ok=not msgs,
        table=table,
        divergences=div,
        draws=draws,
        messages=msgs,
        flags=flags,
        treedepth_saturated=saturated,
        ebfmi=[float(b) for b in bfmi],
        max_mcse_ratio=float(ratio.max()) if len(ratio) else float("nan"),
        stats=scalars,
        scope=f"{scope}: {len(scalars)} scalars" if scope else "",
        population_only=var_names is None and fast_path(idata),
    )
