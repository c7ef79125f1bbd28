"""Leave-one-out predictive accuracy at two levels, with Pareto-k checks and remedies that run.

- visit level (pointwise PSIS-LOO): predicting a new visit of a known participant;
- participant level: the log-likelihood summed over each participant's visits, then PSIS-LOO
  on the participant x draw matrix: predicting a new patient, the unit a trial generalises to.

PSIS and PSIS-LOO are az.psislw's and az.loo's arithmetic in numpy, over all units at once (`psis`, `psis_loo`),
with ArviZ's relative efficiency (`relative_efficiency`, from the convergence verdict's ESS when given): the same
elpd, p_loo and Pareto k. The weights of the pointwise log-likelihood 'y' are computed once per fit
(`pointwise_psis`) for the visit-level LOO without the integrated densities and the LOO-PIT (diagnostics.ppc).

PSIS is unreliable where the Pareto shape k exceeds PARETO_K_MAX. Those units are never reported
silently: `remedy` recomputes them by refitting. With at most REFIT_MAX problem units each is left
out in turn and refitted (exact LOO); with more, every unit is estimated by grouped K-fold
cross-validation (KFOLD_K folds of participants, stratified by arm; at the visit level, folds of visits). A held-out unit's predictive
density is log mean_s p(y_held | theta_s), where the refit saw none of its scores: its participant
effects are then draws from the population distribution given its covariates, as for a new patient.
Refits go through a builder callback `build(design) -> BuiltModel` (any registered model, or a cheap
one in tests) and a `SamplerSettings`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Callable

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import logsumexp

PARETO_K_MAX = 0.7  # PSIS-LOO unreliable above this Pareto shape (Vehtari et al. 2017/2024)
REFIT_MAX = 5  # refit each problem unit when there are at most this many, else grouped K-fold
KFOLD_K = 5  # folds for grouped K-fold by participant (each refit sees 80% of participants: slightly pessimistic, half the time of 10)
OBS_FIELDS = ("y", "t1", "t2")  # per-observation design arrays besides those named obs_*


@dataclass
class LooResult:
    """elpd of one model at one level, per unit and in total, with how each unit was estimated."""

    level: str  # "visit" or "participant"
    units: np.ndarray  # labels: observation index or participant id
    elpd_i: np.ndarray
    pareto_k: np.ndarray  # NaN where a unit was not estimated by PSIS
    method: np.ndarray  # per unit: "psis", "refit" or "kfold"
    p_loo: float = float("nan")
    notes: list[str] = field(default_factory=list)
    integrated: bool = False  # scored by the integrated quantity (INTEGRATED) rather than the conditional one

    @property
    def elpd(self) -> float:
        return float(self.elpd_i.sum())

    @property
    def se(self) -> float:
        return float(np.sqrt(len(self.elpd_i) * np.var(self.elpd_i)))

    @property
    def bad(self) -> np.ndarray:
        """Units whose elpd rests on an unreliable PSIS estimate (k > PARETO_K_MAX and not recomputed)."""
        return (self.method == "psis") & (self.pareto_k > PARETO_K_MAX)

    @property
    def reliable(self) -> bool:
        return not self.bad.any()

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"unit": self.units, "elpd_i": self.elpd_i, "pareto_k": self.pareto_k, "method": self.method})

    def text(self) -> str:
        k = self.pareto_k[np.isfinite(self.pareto_k)]
        methods = ", ".join(f"{m} {int((self.method == m).sum())}" for m in ("psis", "refit", "kfold") if (self.method == m).any())
        line = f"{self.level}-level LOO: elpd {self.elpd:.1f} (SE {self.se:.1f}), p_loo {self.p_loo:.1f}, {len(self.elpd_i)} {self.level}s ({methods})"
        if len(k):
            line += f"; Pareto k max {k.max():.2f}, {int((k > PARETO_K_MAX).sum())} above {PARETO_K_MAX}"
        if not self.reliable:
            line += f"\n  WARNING: {int(self.bad.sum())} {self.level}(s) with Pareto k > {PARETO_K_MAX} not recomputed: this elpd is unreliable"
        return "\n".join([line] + [f"  {n}" for n in self.notes])


def _check(idata: az.InferenceData, var_name: str = "y") -> None:
    if "log_likelihood" not in idata.groups() or var_name not in idata.log_likelihood:
        raise ValueError(f"the fit has no log_likelihood['{var_name}']")


def participant_log_likelihood(idata: az.InferenceData, var_name: str = "y") -> xr.DataArray:
    """Log-likelihood summed over each participant's observations: (chain, draw, participant)."""
    _check(idata, var_name)
    ll = idata.log_likelihood[var_name]
    obs_dim = [d for d in ll.dims if d not in ("chain", "draw")]
    if len(obs_dim) != 1:
        raise ValueError(f"log_likelihood['{var_name}'] must have one observation dimension, has {obs_dim}")
    pid = np.asarray(idata.constant_data["obs_participant"].values, dtype=int)
    labels = idata.constant_data["participant"].values if "participant" in idata.constant_data.coords else np.arange(pid.max() + 1)
    indicator = np.zeros((ll.sizes[obs_dim[0]], len(labels)))
    indicator[np.arange(len(pid)), pid] = 1.0
    values = np.asarray(ll.transpose("chain", "draw", obs_dim[0]).values) @ indicator
    out = xr.DataArray(values, dims=("chain", "draw", "participant"), coords={"chain": ll["chain"], "draw": ll["draw"], "participant": labels})
    return out.isel(participant=indicator.sum(axis=0) > 0)  # participants with no observation contribute nothing


INTEGRATED = {"participant": "y_participant", "visit": "y_visit"}  # log_likelihood variables of the integrated quantities
QUANTITY = {
    "participant": "post-baseline scores given the baseline score, participant effects integrated out",
    "visit": "each post-baseline visit given the participant's other visits (exact, multivariate normal)",
}


def _integrated(idata: az.InferenceData, level: str, var_name: str) -> xr.DataArray | None:
    name = INTEGRATED[level]
    if var_name == "y" and "log_likelihood" in idata.groups() and name in idata.log_likelihood:
        return idata.log_likelihood[name]
    return None


# ---------------------------------------------------------------- PSIS (numpy, vectorised over units)
GPD_PRIOR_B = 3  # Zhang and Stephens' prior on the GPD's b (ArviZ's _gpdfit: prior_bs)
GPD_PRIOR_K = 10  # weakly informative prior pulling k towards 0.5 (ArviZ's _gpdfit: prior_k)
PSIS_BLOCK = 128  # units fitted together (the GPD fit holds units x grid x tail values)


def _logsumexp_rows(x: np.ndarray, plus: np.ndarray | None = None, block: int = 64) -> np.ndarray:
    """ArviZ's _logsumexp of each row of x (+ plus): max, exp of the difference, sum, log, max added back; a block
    of rows at a time in one buffer (the rows stay in the cache)."""
    x = np.atleast_2d(x)
    out = np.empty(x.shape[0])
    buf = np.empty((min(block, x.shape[0]), x.shape[1]))
    with np.errstate(invalid="ignore"):
        for lo in range(0, x.shape[0], block):
            rows = slice(lo, min(lo + block, x.shape[0]))
            part = buf[: rows.stop - lo]
            np.add(x[rows], plus[rows], out=part) if plus is not None else np.copyto(part, x[rows])
            top = part.max(axis=1)
            part -= top[:, None]
            np.exp(part, out=part)
            out[rows] = np.log(part.sum(axis=1)) + top
    return out


def _gpdfit_rows(tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zhang and Stephens' empirical Bayes fit of the generalized Pareto (ArviZ's _gpdfit) to every row of
    `tail` (rows, n), each sorted ascending: (k with the weakly informative prior, sigma) per row."""
    rows, n = tail.shape
    m_est = 30 + int(n**0.5)
    grid = 1 - np.sqrt(m_est / (np.arange(1, m_est + 1, dtype=float) - 0.5))
    b = grid[None, :] / (GPD_PRIOR_B * tail[:, int(n / 4 + 0.5) - 1 : int(n / 4 + 0.5)])
    b += 1 / tail[:, -1:]
    k = np.log1p(-b[:, :, None] * tail[:, None, :]).mean(axis=2)  # rows, grid
    len_scale = n * (np.log(-(b / k)) - k - 1)
    weights = 1 / np.exp(len_scale[:, None, :] - len_scale[:, :, None]).sum(axis=2)
    weights = np.where(weights >= 10 * np.finfo(float).eps, weights, 0.0)  # negligible weights dropped
    weights /= weights.sum(axis=1, keepdims=True)
    b_post = (b * weights).sum(axis=1)
    k_post = np.log1p(-b_post[:, None] * tail).mean(axis=1)
    sigma = -k_post / b_post
    return (n * k_post + GPD_PRIOR_K * 0.5) / (n + GPD_PRIOR_K), sigma


def _psis_row(x: np.ndarray, cutoff_ind: int, cutoffmin: float) -> tuple[np.ndarray, float]:
    """ArviZ's _psislw of one row, step by step (ties, tiny tails, failed fits): the rows `psis` cannot batch."""
    from arviz.stats.stats import _gpdfit, _gpinv

    x = np.array(x, dtype=float)
    x -= np.max(x)
    order = np.argsort(x)
    xcutoff = max(x[order[cutoff_ind]], cutoffmin)
    expxcutoff = np.exp(xcutoff)
    (tailinds,) = np.where(x > xcutoff)
    x_tail = x[tailinds]
    k = np.inf
    if len(x_tail) > 4:
        tail_order = np.argsort(x_tail)
        x_tail = np.exp(x_tail) - expxcutoff
        k, sigma = _gpdfit(x_tail[tail_order])
        if np.isfinite(k):
            smoothed = np.log(_gpinv(np.arange(0.5, len(x_tail)) / len(x_tail), k, sigma) + expxcutoff)
            x[tailinds[tail_order]] = smoothed
            x[x > 0] = 0
    return x - _logsumexp_rows(x), k


def psis(log_ratios, r_eff: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pareto smoothed importance sampling of every row of `log_ratios` (units, draws): the smoothed, truncated and
    normalised log weights (units, draws) and the Pareto shape k-hat of each row, as az.psislw(log_ratios, r_eff)
    (Vehtari et al. 2024): the largest ceil(min(S / 5, 3 sqrt(S / r_eff))) ratios of each row are replaced by the
    quantiles of a generalized Pareto fitted to them (Zhang and Stephens' estimator, k shrunk towards 0.5), capped at
    the largest raw ratio. Only the largest ratios of each row are sorted, and the fits run over a block of rows at
    once; a row with a tie at the cut-off, a tail of 4 draws or fewer, or a failed fit goes through ArviZ's steps
    one by one (`_psis_row`). Agrees with az.psislw to rounding (tests/test_loo_psis.py)."""
    return _psis_inplace(np.array(log_ratios, dtype=float, ndmin=2), r_eff)


def _psis_inplace(x: np.ndarray, r_eff: float) -> tuple[np.ndarray, np.ndarray]:
    """`psis` of a float array (units, draws) that it may overwrite."""
    n_units, n_draws = x.shape
    m = int(np.ceil(min(n_draws / 5.0, 3 * (n_draws / r_eff) ** 0.5)))
    cutoff_ind = -m - 1
    cutoffmin = np.log(np.finfo(float).tiny)
    k_hat = np.empty(n_units)
    x -= x.max(axis=1, keepdims=True)
    lone = np.zeros(n_units, dtype=bool)
    if m + 1 <= n_draws and m > 4:
        for lo in range(0, n_units, PSIS_BLOCK):
            rows = slice(lo, min(lo + PSIS_BLOCK, n_units))
            block = x[rows]
            # the m + 1 largest of each row, sorted: the cut-off and the tail
            top = np.argpartition(block, n_draws - m - 1, axis=1)[:, n_draws - m - 1 :]
            top = np.take_along_axis(top, np.argsort(np.take_along_axis(block, top, axis=1), axis=1), axis=1)
            values = np.take_along_axis(block, top, axis=1)
            cutoff = values[:, 0]
            # batched when the tail is exactly the m largest (the cut-off below them all)
            ok = (cutoff >= cutoffmin) & (values[:, 1] > cutoff)
            for i in np.flatnonzero(ok & (np.diff(values[:, 1:], axis=1) == 0).any(axis=1)):
                # ties in the tail: the smoothed values go to the tied draws in the order ArviZ's argsort of the
                # tail (in draw order) gives them
                tail_idx = np.sort(top[i, 1:])
                top[i, 1:] = tail_idx[np.argsort(block[i, tail_idx])]
            expcut = np.exp(cutoff)
            tail = np.exp(values[:, 1:]) - expcut[:, None]
            with np.errstate(all="ignore"):  # rows that failed are redone one by one
                k, sigma = _gpdfit_rows(tail)
            ok &= np.isfinite(k) & (sigma > 0)
            lone[rows] = ~ok
            k_hat[rows] = k
            p = np.arange(0.5, m) / m
            tiny = np.abs(k) < np.finfo(float).eps
            with np.errstate(divide="ignore", invalid="ignore"):
                quantiles = np.where(tiny[:, None], -np.log1p(-p)[None, :],
                                     np.expm1(-k[:, None] * np.log1p(-p)[None, :]) / np.where(tiny, 1.0, k)[:, None])
                smoothed = np.log(quantiles * sigma[:, None] + expcut[:, None])
            # ArviZ's x[x > 0] = 0 after smoothing: only a smoothed value can exceed 0 (every x minus its row's maximum is <= 0)
            smoothed = np.where(smoothed > 0, 0.0, smoothed)
            idx = np.flatnonzero(ok)
            block[idx[:, None], top[idx, 1:]] = smoothed[idx]
    else:
        lone[:] = True
    with np.errstate(invalid="ignore"):
        total = _logsumexp_rows(x)
    total[lone] = 0.0
    x -= total[:, None]
    for i in np.flatnonzero(lone):
        x[i], k_hat[i] = _psis_row(x[i], cutoff_ind, cutoffmin)
    return x, k_hat


@dataclass
class PsisLoo:
    """PSIS-LOO of one log-likelihood (units x draws): each unit's elpd and Pareto k, p_loo; with the replicated
    values, each unit's LOO-PIT."""

    elpd_i: np.ndarray
    pareto_k: np.ndarray
    p_loo: float
    pit: np.ndarray | None = None  # min(1, sum_s w_is [y_rep_is <= y_i]) (diagnostics.ppc's LOO-PIT), when asked for


LOO_BLOCK = PSIS_BLOCK  # units per block of a PSIS-LOO pass: memory of a few (block x draws) arrays, whatever the trial's size


def _loo_rows(log_lik: np.ndarray, r_eff: float, rep: np.ndarray | None = None, y: np.ndarray | None = None):
    """elpd_i, k, lppd_i (and the LOO-PIT with `rep`, `y`) of the rows of a float64 (units, draws) C-order array."""
    weights, k = _psis_inplace(np.negative(log_lik), r_eff)
    elpd_i = _logsumexp_rows(weights, log_lik)
    lppd_i = _logsumexp_rows(log_lik) - np.log(log_lik.shape[1])
    pit = None
    if rep is not None:  # the normalised weights of the replications at or below y_i, summed (az.loo_pit)
        np.exp(weights, out=weights)
        pit = np.minimum(1.0, np.einsum("ij,ij->i", (rep <= y[:, None]).astype(float), weights))
    return elpd_i, k, lppd_i, pit


def _gather(parts: list) -> PsisLoo:
    elpd_i, k, lppd_i, pit = (np.concatenate(p) if p[0] is not None else None for p in zip(*parts))
    return PsisLoo(elpd_i=elpd_i, pareto_k=k, p_loo=float(lppd_i.sum()) - float(elpd_i.sum()), pit=pit)


def psis_loo(log_lik: np.ndarray, r_eff: float) -> PsisLoo:
    """elpd_i = log sum_s w_is p(y_i | theta_s) with PSIS weights of 1 / p(y_i | theta_s); p_loo = lppd - elpd
    (az.loo's arithmetic: log_lik (units, draws)), LOO_BLOCK units at a time."""
    log_lik = np.array(log_lik, dtype=float, ndmin=2, copy=None)
    return _gather([_loo_rows(np.ascontiguousarray(log_lik[lo : lo + LOO_BLOCK]), r_eff)
                    for lo in range(0, log_lik.shape[0], LOO_BLOCK)])


def unit_rows(values: np.ndarray, lo: int, hi: int, tile: int = 512) -> np.ndarray:
    """Units lo:hi of a (chain, draw, unit) or (chain x draw, unit) array as a float64 (units, chain x draw) C-order
    array, draws in ArviZ's stacking order (chain by chain); a view when they are stored so. The transposed copy is
    made `tile` draws at a time (they stay in the cache: three times as fast as numpy's strided copy)."""
    part = values[..., lo:hi]
    part = part.reshape(-1, part.shape[-1])
    if part.dtype == np.float64 and part.T.flags.c_contiguous:
        return part.T
    out = np.empty(part.shape[::-1])
    for s in range(0, part.shape[0], tile):
        out[:, s : s + tile] = part[s : s + tile].T
    return out


def draws_last(da: xr.DataArray) -> np.ndarray:
    """A (chain, draw, unit) DataArray's values in that order (no copy when they are stored so)."""
    unit = [d for d in da.dims if d not in ("chain", "draw")]
    return da.transpose("chain", "draw", *unit).values


def psis_loo_draws(log_lik, r_eff: float, rep=None, y: np.ndarray | None = None) -> PsisLoo:
    """`psis_loo` of a (chain, draw, unit) log-likelihood (a DataArray or an array of any float type), read LOO_BLOCK
    units at a time: no copy of the whole is made. rep ((chain, draw, unit) or (chain x draw, unit)) and y (unit): the
    replicated and observed values, for each unit's LOO-PIT from the same weights."""
    values = draws_last(log_lik) if isinstance(log_lik, xr.DataArray) else np.asarray(log_lik)
    reps = (draws_last(rep) if isinstance(rep, xr.DataArray) else np.asarray(rep)) if rep is not None else None
    parts = []
    for lo in range(0, values.shape[2], LOO_BLOCK):
        hi = min(lo + LOO_BLOCK, values.shape[2])
        parts.append(_loo_rows(unit_rows(values, lo, hi), r_eff, unit_rows(reps, lo, hi) if reps is not None else None,
                               None if y is None else np.asarray(y[lo:hi], dtype=float)))
    return _gather(parts)


def as_units_by_draws(ll: xr.DataArray) -> np.ndarray:
    """A (chain, draw, unit) log-likelihood as (unit, chain x draw), draws in ArviZ's stacking order."""
    values = np.asarray(draws_last(ll), dtype=float)
    return values.reshape(values.shape[0] * values.shape[1], -1).T


_CACHE: dict[tuple[int, str], tuple] = {}  # (id(idata), what) -> (weak reference to idata, the groups read, value)


def _groups_read(idata: az.InferenceData) -> tuple:
    return tuple(idata[g] if g in idata.groups() else None for g in ("posterior", "log_likelihood", "posterior_predictive", "observed_data"))


def per_fit(idata: az.InferenceData, what: str, compute):
    """compute() once per InferenceData and its posterior and log-likelihood groups (a group replaced: computed
    again): r_eff and the PSIS of 'y' serve the LOO, the LOO-PIT and its figure. An entry goes with its InferenceData."""
    import weakref

    key = (id(idata), what)
    hit = _CACHE.get(key)
    groups = _groups_read(idata)
    if hit is not None and hit[0]() is idata and all(a is b for a, b in zip(hit[1], groups)):
        return hit[2]
    value = compute()
    _CACHE[key] = (weakref.ref(idata, lambda _ref, key=key: _CACHE.pop(key, None)), groups, value)
    return value


def release(idata: az.InferenceData, var_name: str = "y") -> None:
    """Drop what is cached of the size of the log-likelihood (units x draws) once its users are done: the PSIS weights
    of `var_name` (diagnostics.ppc `loo_pit_log_weights`, integer scores) and the replicated scores (`replicated`)."""
    for what in (f"weights:{var_name}", "replicated"):
        _CACHE.pop((id(idata), what), None)


def relative_efficiency(idata: az.InferenceData, stats: pd.DataFrame | None = None) -> float:
    """PSIS's relative efficiency r_eff: the mean, over the population-level scalars of the posterior
    (diagnostics.convergence.summary_names: neither participant-level values nor biomarker values), of their ESS for
    the mean (split chains, not rank-normalised, as az.loo takes it) over the number of draws; 1 with one chain.
    (az.loo takes the mean over every posterior scalar; on the fast path the participant-level draws are exact
    conditional draws given each population draw, so the population parameters carry the sampler's efficiency.)
    `stats`: the convergence verdict's per-scalar statistics (diagnostics.convergence.Verdict.stats, column
    'ess_mean'), read when they cover those scalars, so that nothing is computed twice; computed here otherwise
    (once per InferenceData)."""
    from .convergence import scalar_draws, scalar_labels, summary_names

    post = idata.posterior
    chains, draws = post.sizes.get("chain", 1), post.sizes.get("draw", 0)
    if chains < 2:
        return 1.0
    names = summary_names(post)
    labels = scalar_labels(post, names)
    if stats is not None and "ess_mean" in stats and len(labels) and set(labels) <= set(stats.index):
        return per_fit(idata, "r_eff", lambda: float(np.asarray(stats.loc[labels, "ess_mean"], dtype=float).mean() / (chains * draws)))

    def compute():
        from .mcmc_stats import ess_mean

        values, _ = scalar_draws(post, names)
        return float(ess_mean(values).mean() / (chains * draws))

    return per_fit(idata, "r_eff", compute)


def pointwise_psis(idata: az.InferenceData, var_name: str = "y", pit=None) -> PsisLoo:
    """PSIS-LOO of the pointwise log-likelihood `var_name`, once per InferenceData, read a block of units at a time
    (`psis_loo_draws`): the visit-level LOO of a fit without the integrated densities, the LOO-PIT and its figure
    share it. pit: a function giving (replicated values, observed values) (diagnostics.ppc `pit_inputs`), whose LOO-PIT
    is then summed from the same weights in the same pass."""
    _check(idata, var_name)

    def compute():
        rep, y = pit() if pit is not None else (None, None)
        return psis_loo_draws(idata.log_likelihood[var_name], relative_efficiency(idata), rep, y)

    key = f"psis:{var_name}"
    done = per_fit(idata, key, compute)
    if pit is not None and done.pit is None:  # computed before without the LOO-PIT (the LOO first): again, with it
        _CACHE.pop((id(idata), key), None)
        done = per_fit(idata, key, compute)
    return done


def _psis(idata: az.InferenceData, ll: xr.DataArray | PsisLoo, level: str, units, integrated: bool = False) -> LooResult:
    res = ll if isinstance(ll, PsisLoo) else psis_loo_draws(ll, relative_efficiency(idata))
    return LooResult(
        level=level,
        units=np.asarray(units),
        elpd_i=res.elpd_i,
        pareto_k=res.pareto_k,
        method=np.array(["psis"] * len(units), dtype=object),
        p_loo=res.p_loo,
        integrated=integrated,
    )


def loo_visits(idata: az.InferenceData, var_name: str = "y", integrated: bool = True) -> LooResult:
    """PSIS-LOO over visits: on the exact leave-one-visit-out densities ('y_visit') when the fit has them,
    else on the pointwise log-likelihood conditional on the participant effects."""
    ll = _integrated(idata, "visit", var_name) if integrated else None
    if ll is not None:
        return _psis(idata, ll, "visit", ll["scored_visit"].values, integrated=True)
    _check(idata, var_name)
    n_obs = int(np.prod([n for d, n in idata.log_likelihood[var_name].sizes.items() if d not in ("chain", "draw")]))
    return _psis(idata, pointwise_psis(idata, var_name), "visit", np.arange(n_obs))


def loo_participants(idata: az.InferenceData, var_name: str = "y", integrated: bool = True) -> LooResult:
    """Leave-one-participant-out PSIS-LOO: on the integrated densities ('y_participant') when the fit has
    them, else on the participant-summed log-likelihood conditional on the participant effects."""
    ll = _integrated(idata, "participant", var_name) if integrated else None
    if ll is not None:
        return _psis(idata, ll, "participant", ll["scored_participant"].values, integrated=True)
    ll = participant_log_likelihood(idata, var_name)
    return _psis(idata, ll, "participant", ll["participant"].values)


# ---------------------------------------------------------------- refits


def subset_observations(design, keep: np.ndarray):
    """A copy of a TrialDesign keeping only the observation rows where `keep` is True."""
    keep = np.asarray(keep, dtype=bool)
    n_obs = len(design.y)
    changes = {}
    for f in dataclasses.fields(design):
        value = getattr(design, f.name)
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n_obs and (f.name in OBS_FIELDS or f.name.startswith("obs_")):
            changes[f.name] = value[keep]
    return dataclasses.replace(design, **changes)


def refit_heldout(design, build: Callable, held: np.ndarray, settings, outcome: str = "y", quiet: bool = True) -> tuple[np.ndarray, int]:
    """Refit without the `held` observation rows; return their log-likelihood (n_held, draws) and the refit's divergences."""
    import pymc as pm

    from inference.sampling import sample_posterior

    held = np.asarray(held, dtype=bool)
    if held.all() or not held.any():
        raise ValueError("a held-out set must contain some observations, not all")
    post, _ = sample_posterior(build(subset_observations(design, ~held)), settings, quiet=quiet)
    divergences = int(post.sample_stats["diverging"].sum()) if "diverging" in post.sample_stats else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll = pm.compute_log_likelihood(post, model=build(subset_observations(design, held)).model, var_names=[outcome], extend_inferencedata=False, progressbar=False)
    return np.asarray(ll[outcome].stack(sample=("chain", "draw")).transpose(..., "sample").values), divergences


def refit_integrated(design, build: Callable, held: np.ndarray, settings, quiet: bool = True) -> tuple[xr.DataArray, int]:
    """Refit without the `held` observation rows (whole participants); return the held-out participants'
    integrated densities log p(post-baseline | baseline, theta) per refit draw, and the refit's divergences.

    The refit samples the model's fast variant when it has one; the held-out participants stay in its
    design without observations, so their fixed part (arm, site, biomarkers) is defined."""
    from inference.marginal import fixed_part, integrated_log_likelihood, plain_integrated_log_likelihood
    from inference.sampling import sample_posterior

    held = np.asarray(held, dtype=bool)
    built = build(subset_observations(design, ~held))
    fast = built.fast_variant() if built.fast_variant is not None and settings.fast else None
    post, _ = sample_posterior(fast or built, settings, quiet=quiet)
    divergences = int(post.sample_stats["diverging"].sum()) if "diverging" in post.sample_stats else 0
    held_design = subset_observations(design, held)
    if fast is not None:
        densities = integrated_log_likelihood(post, held_design, fixed_part(post.posterior, fast))
    else:
        densities = plain_integrated_log_likelihood(post, build(held_design))
    if not densities:
        raise ValueError(f"model '{built.name}' has no integrated form (a Normal likelihood is needed)")
    return densities["y_participant"], divergences


def _logmeanexp(x: np.ndarray, axis=-1):
    return logsumexp(x, axis=axis) - np.log(x.shape[axis])


def heldout_elpd(design, build: Callable, row_groups: list[np.ndarray], settings, outcome: str = "y", quiet: bool = True) -> np.ndarray:
    """log p(y_group | y_rest) for each group of observation rows: refit without the group, score it.

    `build(design) -> BuiltModel`; `settings` an inference.sampling.SamplerSettings (its seed is split
    into one stream per refit, so the same seed gives the same numbers). Returns one value per group;
    `heldout_elpd.divergences` holds the refits' divergent transitions of the last call.
    """
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(settings.seed).spawn(len(row_groups))]
    out = np.empty(len(row_groups))
    heldout_elpd.divergences = 0
    for g, rows in enumerate(row_groups):
        held = np.zeros(len(design.y), dtype=bool)
        held[np.asarray(rows, dtype=int)] = True
        arr, div = refit_heldout(design, build, held, dataclasses.replace(settings, seed=seeds[g]), outcome, quiet)
        heldout_elpd.divergences += div
        out[g] = float(_logmeanexp(arr.sum(axis=0)))
    return out


def kfold_groups(design, k: int, seed: int) -> list[np.ndarray]:
    """K folds of participants, stratified by arm (random within arm), as lists of participant indices."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    pos = 0
    for arm in np.unique(design.arm_idx):
        members = rng.permutation(np.nonzero(design.arm_idx == arm)[0])
        for p in members:
            folds[pos % k].append(int(p))
            pos += 1
    return [np.asarray(sorted(f), dtype=int) for f in folds if f]


def grouped_kfold_integrated(design, build: Callable, settings, k: int = KFOLD_K, quiet: bool = True) -> LooResult:
    """Grouped K-fold by participant on the integrated quantity: each fold's participants held out together,
    each scored by log mean over the refit's draws of p(their post-baseline scores | baseline, theta).
    The cross-validation counterpart of `loo_participants` on 'y_participant' (same units)."""
    folds = kfold_groups(design, min(k, design.n_participants), settings.seed)
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(settings.seed + 1).spawn(len(folds))]
    scores: dict[str, float] = {}
    divergences = 0
    for f, members in enumerate(folds):
        held = np.isin(design.obs_participant, members)
        if not held.any():
            continue
        dens, div = refit_integrated(design, build, held, dataclasses.replace(settings, seed=seeds[f]), quiet=quiet)
        divergences += div
        flat = dens.stack(sample=("chain", "draw")).transpose("scored_participant", "sample")
        for label, row in zip(flat["scored_participant"].values, flat.values):
            scores[str(label)] = float(_logmeanexp(row))
    units = [str(p) for p in design.participants if str(p) in scores]
    note = f"grouped {len(folds)}-fold cross-validation by participant on the integrated densities ({len(folds)} refits)"
    return LooResult(level="participant", units=np.asarray(units, dtype=object), elpd_i=np.array([scores[u] for u in units]),
                     pareto_k=np.full(len(units), np.nan), method=np.array(["kfold"] * len(units), dtype=object), integrated=True,
                     notes=[note + (f"; WARNING: {divergences} divergent transitions across the refits" if divergences else "; no divergences in the refits")])


def grouped_kfold(design, build: Callable, settings, k: int = KFOLD_K, level: str = "participant", quiet: bool = True) -> LooResult:
    """K-fold cross-validation: elpd of every participant (grouped by participant) or every visit, from K refits.

    level='participant': each fold's participants are held out together (all their visits); the fold's
    elpd is split back to participants by scoring each held-out participant against the same refit.
    level='visit': folds are random sets of visits (a participant's other visits stay in), each
    held-out visit scored on its own, the K-fold counterpart of pointwise LOO.
    """
    n_obs = len(design.y)
    if level == "visit":
        order = np.random.default_rng(settings.seed).permutation(n_obs)
        masks = [np.isin(np.arange(n_obs), order[f::k]) for f in range(min(k, n_obs))]
        units = np.arange(n_obs)
        note = f"{len(masks)}-fold cross-validation by visit ({len(masks)} refits)"
    else:
        folds = kfold_groups(design, min(k, design.n_participants), settings.seed)
        masks = [np.isin(design.obs_participant, members) for members in folds]
        units = np.unique(design.obs_participant)
        note = f"grouped {len(masks)}-fold cross-validation by participant ({len(masks)} refits)"
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(settings.seed + 1).spawn(len(masks))]
    elpd = np.full(len(units), np.nan)
    divergences = 0
    for f, held in enumerate(masks):
        if not held.any():
            continue
        arr, div = refit_heldout(design, build, held, dataclasses.replace(settings, seed=seeds[f]), quiet=quiet)  # (n_held_obs, draws)
        divergences += div
        rows = np.nonzero(held)[0]
        if level == "visit":
            elpd[rows] = _logmeanexp(arr, axis=1)
        else:
            pid = design.obs_participant[rows]
            for p in np.unique(pid):
                elpd[np.searchsorted(units, p)] = float(_logmeanexp(arr[pid == p].sum(axis=0)))
    labels = units if level == "visit" else np.asarray(design.participants)[units]
    return LooResult(level=level, units=np.asarray(labels), elpd_i=elpd, pareto_k=np.full(len(units), np.nan), method=np.array(["kfold"] * len(units), dtype=object),
                     notes=[note + (f"; WARNING: {divergences} divergent transitions across the refits" if divergences else "; no divergences in the refits")])


def remedy(result: LooResult, design, build: Callable, settings, refit_max: int = REFIT_MAX, k: int = KFOLD_K, quiet: bool = True) -> LooResult:
    """Recompute every unit with Pareto k > PARETO_K_MAX: exact refits if few, grouped K-fold otherwise."""
    bad = np.nonzero(result.bad)[0]
    if not len(bad):
        return result
    if len(bad) <= refit_max:
        if result.level == "participant":
            pos = {str(p): i for i, p in enumerate(design.participants)}
            groups = [np.nonzero(design.obs_participant == pos[str(result.units[i])])[0] for i in bad]
        else:
            groups = [np.array([int(result.units[i])]) for i in bad]
        exact = heldout_elpd(design, build, groups, settings, quiet=quiet)
        div = getattr(heldout_elpd, "divergences", 0)
        elpd_i, method = result.elpd_i.copy(), result.method.copy()
        elpd_i[bad], method[bad] = exact, "refit"
        note = f"{len(bad)} {result.level}(s) with Pareto k > {PARETO_K_MAX} refitted without their data (exact LOO): " + ", ".join(
            f"{result.units[i]} {result.elpd_i[i]:.2f} -> {e:.2f}" for i, e in zip(bad, exact)
        ) + (f"; WARNING: {div} divergent transitions in the refits" if div else "; no divergences in the refits")
        return dataclasses.replace(result, elpd_i=elpd_i, method=method, notes=result.notes + [note])
    kf = grouped_kfold(design, build, settings, k=k, level=result.level, quiet=quiet)
    note = f"{len(bad)} {result.level}s with Pareto k > {PARETO_K_MAX} (more than {refit_max}): every {result.level} estimated by grouped K-fold instead (PSIS elpd was {result.elpd:.1f})"
    return dataclasses.replace(kf, pareto_k=result.pareto_k, p_loo=result.p_loo, notes=result.notes + kf.notes + [note])
