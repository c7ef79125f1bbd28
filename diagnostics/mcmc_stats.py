"""R-hat, effective sample sizes and Monte Carlo standard errors of MCMC draws, vectorised.

For draws of shape (chain, draw, n), every scalar of every variable stacked along the last axis,
`diagnostics` returns per scalar what `az.summary(..., kind="diagnostics")` reports (`mcse_mean`,
`mcse_sd`, `ess_bulk`, `ess_tail`, `r_hat`) and `posterior_sd` the posterior SD (ddof=1). The
definitions are ArviZ 0.23's (`_multichain_statistics` in arviz/stats/diagnostics.py), reproduced
operation by operation. ArviZ runs them one scalar at a time in Python; here every step (sorts,
FFTs, reductions) runs over all scalars at once:

- split chains (`_split_chains`): the first and the last `draw // 2` draws of each chain (the middle
  draw of an odd count is dropped), giving 2 x chain sequences;
- rank normalisation (`_z_scale`): average ranks r over all split draws (N of them), then
  z = Phi^-1((r - 3/8) / (N - 3/4 + 1)) (Blom's fractional offset);
- R-hat: the larger of the split R-hat of the rank-normalised draws (bulk) and of the rank-normalised
  |draw - median of all draws| (tail); NaN with one chain;
- ESS (`_ess`): FFT autocovariance per chain, Geyer's initial positive sequence truncation, then
  the initial monotone sequence, tau at least 1 / log10(N); N when max - min is below the float
  resolution (a constant);
- bulk ESS: ESS of the rank-normalised split draws. Tail ESS: the smaller ESS of the indicators
  draw <= q at the 5% and 95% quantiles (R's type 7, as `mquantiles(alphap=1, betap=1)`);
- mcse_mean = sqrt(var(ddof=1) / ESS of the split draws); mcse_sd = sqrt(varvar / v / 4), with v the
  mean squared deviation and varvar the variance of the squared deviations over their split-chain ESS;
- a scalar with a NaN draw, or fewer than 4 draws, is NaN in every column.

Floating-point details that can decide a result are copied too: with numba installed (ArviZ's
default) ArviZ takes within- and between-chain variances with a one-pass formula (E[x^2] - E[x]^2,
sequential sums; `arviz.utils.Numba.numba_flag` is followed), which is what makes R-hat of a scalar
constant within chains but different between them NaN or a huge number; the tail quantiles use
scipy's mquantiles arithmetic, which can fall an ulp below a tied value. Summation orders differ in
places, so values agree with az.summary to a few units in the last place (R-hat usually bit for
bit); tests/test_mcmc_stats.py checks 1e-8 relative.
"""

from __future__ import annotations

import numpy as np
from arviz.utils import Numba
from scipy import fft as sp_fft
from scipy import stats
from scipy.fftpack import next_fast_len

DIAGNOSTICS = ("mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat")  # az.summary's column order
MIN_DRAWS = 4  # ArviZ returns NaN below this many draws per chain
TAIL_PROBS = (0.05, 0.95)  # the quantiles of the tail ESS
BLOM_OFFSET = 3 / 8  # the fractional offset of the rank normalisation
BLOCK = 256  # scalars processed together (bounds the memory of the FFTs to a few tens of MB)


# --- public functions: draws of shape (chain, draw, n) --------------------------------------------


def diagnostics(samples, block: int = BLOCK) -> dict[str, np.ndarray]:
    """mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat of every scalar of `samples` (chain, draw, n).

    Each value is an array of shape (n,), as `az.summary(kind="diagnostics", round_to="none")` reports
    them. Draws are taken as float64 (ArviZ keeps float32 draws in float32 for part of the arithmetic).
    With them, under the key 'ess_mean', the ESS for the mean behind mcse_mean (`ess_mean`).
    """
    x = _as_draws(samples)
    n = x.shape[2]
    out = {name: np.full(n, np.nan) for name in (*DIAGNOSTICS, "ess_mean")}
    if x.shape[1] < MIN_DRAWS or x.shape[0] < 1:
        return out
    for lo in range(0, n, block):
        part = _scalars_first(x[:, :, lo : lo + block])
        valid = ~np.isnan(part).any(axis=(1, 2))
        if not valid.any():
            continue
        values = _block_diagnostics(part if valid.all() else part[valid])
        for name in out:
            out[name][lo : lo + part.shape[0]][valid] = values[name]
    return out


def posterior_sd(samples) -> np.ndarray:
    """Posterior SD (ddof=1) over all chains and draws of each scalar, shape (n,)."""
    x = _as_draws(samples)
    return np.std(_scalars_first(x).reshape(x.shape[2], x.shape[0] * x.shape[1]), axis=-1, ddof=1)


def split_chains(samples) -> np.ndarray:
    """(chain, draw, n) -> (2 chain, draw // 2, n): first halves of every chain, then last halves."""
    x = _as_draws(samples)
    half = x.shape[1] // 2
    return np.concatenate((x[:, :half], x[:, x.shape[1] - half :]), axis=0)


def rank_normalize(samples) -> np.ndarray:
    """ArviZ's `_z_scale` of each scalar: normal scores of the average ranks over all chains and draws."""
    x = _as_draws(samples)
    return np.moveaxis(_z_scale(_scalars_first(x))[0], 0, -1)


def ess(samples) -> np.ndarray:
    """ArviZ's `_ess` of each scalar, chains as given (no splitting, no rank normalisation), shape (n,)."""
    x = _as_draws(samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _ess(_scalars_first(x))


# --- internals: arrays of shape (scalar, chain, draw), C-contiguous ------------------------------


def ess_mean(samples, block: int = BLOCK) -> np.ndarray:
    """ArviZ's ESS for the mean (`az.ess(method="mean")`: split chains, not rank-normalised) of each scalar, shape (n,):
    the ESS behind mcse_mean, and PSIS's relative efficiency (diagnostics.loo.relative_efficiency)."""
    x = _as_draws(samples)
    out = np.full(x.shape[2], np.nan)
    if x.shape[1] < MIN_DRAWS or x.shape[0] < 1:
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        for lo in range(0, x.shape[2], block):
            part = _scalars_first(x[:, :, lo : lo + block])
            valid = ~np.isnan(part).any(axis=(1, 2))
            if valid.any():
                out[lo : lo + part.shape[0]][valid] = _ess(_split(part if valid.all() else part[valid]))
    return out


def _as_draws(samples) -> np.ndarray:
    x = np.asarray(samples, dtype=float)
    if x.ndim != 3:
        raise ValueError(f"expected draws of shape (chain, draw, n), got {x.shape}")
    return x


def _scalars_first(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, -1, 0))


def _split(y: np.ndarray) -> np.ndarray:
    half = y.shape[2] // 2
    return np.concatenate((y[:, :, :half], y[:, :, y.shape[2] - half :]), axis=1)


def _var(y: np.ndarray, ddof: int) -> np.ndarray:
    """Variance along the last axis the way ArviZ computes it (`_numba_var`)."""
    if not Numba.numba_flag:
        return np.var(y, axis=-1, ddof=ddof)
    # arviz.stats.stats_utils.stats_variance_1d: sequential sums (cumsum is sequential), one pass
    n = y.shape[-1]
    total = np.cumsum(y, axis=-1)[..., -1]
    total_sq = np.cumsum(y * y, axis=-1)[..., -1]
    mean = total / n
    return (total_sq / n - mean * mean) * (n / (n - ddof))


def _mean_over_chains(y: np.ndarray) -> np.ndarray:
    """(scalar, chain, t) -> (scalar, t): np.mean over chains as ArviZ takes it, a column at a time
    (numpy's pairwise summation over a contiguous row gives the same grouping of the additions)."""
    return np.ascontiguousarray(np.swapaxes(y, 1, 2)).mean(axis=-1)


def _z_scale(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank normalisation over all chains and draws of each scalar of y (scalar, chain, draw).

    Returns the normal scores (shape of y), and for each scalar the argsort of its flattened draws and
    the sorted draws.
    """
    flat = y.reshape(y.shape[0], -1)
    order = np.argsort(flat, axis=-1)
    ordered = np.take_along_axis(flat, order, axis=-1)
    return _normal_scores(order, ordered).reshape(y.shape), order, ordered


def _normal_scores(order: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """ArviZ's `_z_scale` from a sort: Phi^-1((r - 3/8) / (N - 3/4 + 1)) of the average ranks r, in the
    original positions (`order` is the argsort of each row, `ordered` the sorted row)."""
    size = ordered.shape[1]
    # 2 * rank - 2 indexes a table of the normal scores of every possible (average) rank; without
    # ties it is 2 * the sorted position
    code_sorted = np.broadcast_to(2 * np.arange(size), ordered.shape)
    tied = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if tied.any():
        # a tie group at sorted positions first..last has average rank (first + last) / 2 + 1
        code_sorted = code_sorted.copy()
        sub = ordered[tied]
        pos = np.arange(size)
        starts = np.ones(sub.shape, dtype=bool)
        starts[:, 1:] = sub[:, 1:] != sub[:, :-1]
        ends = np.ones(sub.shape, dtype=bool)
        ends[:, :-1] = starts[:, 1:]
        first = np.maximum.accumulate(np.where(starts, pos, 0), axis=-1)
        last = np.minimum.accumulate(np.where(ends, pos, size)[:, ::-1], axis=-1)[:, ::-1]
        code_sorted[tied] = first + last
    code = np.empty(ordered.shape, dtype=np.intp)
    np.put_along_axis(code, order, code_sorted, axis=-1)
    ranks = np.arange(2 * size - 1) / 2 + 1.0
    scores = stats.norm.ppf((ranks - BLOM_OFFSET) / (size - 2 * BLOM_OFFSET + 1))
    return scores[code]


def _rhat(z: np.ndarray) -> np.ndarray:
    """ArviZ's `_rhat` (split chains given) of each scalar."""
    n = z.shape[2]
    chain_mean = z.mean(axis=-1)
    between = n * _var(chain_mean, ddof=1)
    within = np.ascontiguousarray(_var(z, ddof=1)).mean(axis=-1)
    return np.sqrt((between / within + n - 1) / n)


def _autocov(y: np.ndarray) -> np.ndarray:
    """arviz.stats.stats_utils.autocov along the draw axis."""
    n = y.shape[-1]
    m = next_fast_len(2 * n)
    padded = np.zeros((*y.shape[:-1], m))
    np.subtract(y, y.mean(axis=-1, keepdims=True), out=padded[..., :n])
    # scipy.fft runs the same pocketfft as np.fft (identical results), a little faster
    spectrum = sp_fft.rfft(padded, axis=-1)
    spectrum *= np.conjugate(spectrum)
    cov = sp_fft.irfft(spectrum, n=m, axis=-1, overwrite_x=True)[..., :n]
    cov /= n
    return cov


def _ess(y: np.ndarray) -> np.ndarray:
    """ArviZ's `_ess` of each scalar of y (scalar, chain, draw), chains as given."""
    n_scalar, n_chain, n_draw = y.shape
    total = n_chain * n_draw
    constant = (y.max(axis=(1, 2)) - y.min(axis=(1, 2))) < np.finfo(float).resolution
    acov = _mean_over_chains(_autocov(y))  # (scalar, lag)
    mean_var = acov[:, 0] * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus = var_plus + _var(y.mean(axis=-1), ddof=1)
    rho = 1.0 - (mean_var[:, None] - acov) / var_plus[:, None]  # rho[:, 0] is replaced by 1

    # Geyer's initial positive sequence. Pair k holds lags (2k, 2k + 1), pair 0 is (1, rho_1). ArviZ's
    # loop reads pair k (k = 1, 2, ...) while 2k - 1 < n_draw - 3 and pair k - 1 sums to > 0, and keeps
    # pair k if it sums to >= 0; so it reads pairs 1..n_read, n_read = the number of leading pairs
    # (among 0..k_max - 1) with a positive sum.
    k_max = max(0, (n_draw - 3) // 2)
    pair_sum = np.empty((n_scalar, k_max + 1))
    pair_sum[:, 0] = 1.0 + rho[:, 1]
    pair_sum[:, 1:] = rho[:, 2 : 2 * k_max + 1 : 2] + rho[:, 3 : 2 * k_max + 2 : 2]
    stop = np.ones((n_scalar, k_max + 1), dtype=bool)  # a sentinel column at k_max
    stop[:, :k_max] = ~(pair_sum[:, :k_max] > 0.0)
    n_read = stop.argmax(axis=1)
    # Geyer's initial monotone sequence over the pairs 0..n_read - 1: a pair summing to more than the
    # previous (already lowered) pair is set to it, i.e. the running minimum of the pair sums
    monotone = np.minimum.accumulate(pair_sum, axis=1)
    kept = np.arange(k_max + 1) < n_read[:, None]
    summed = np.where(kept, monotone, 0.0).sum(axis=1)
    # the even lag of the last pair read enters once: if positive, or if that pair was kept (sum >= 0);
    # with no pair read it is lag 0 (1.0)
    read = n_read > 0
    last_pair = np.where(read, n_read, 0)
    rho_even = np.where(read, rho[np.arange(n_scalar), 2 * last_pair], 1.0)
    keep_last = (rho_even > 0) | (read & (pair_sum[np.arange(n_scalar), last_pair] >= 0))
    tau = -1.0 + 2.0 * summed + np.where(keep_last, rho_even, 0.0)
    floor = 1 / np.log10(total)
    tau = np.where(floor > tau, floor, tau)  # Python's max(tau, floor)
    out = total / tau
    out[np.isnan(rho[:, 1])] = np.nan
    out[constant] = total
    return out


def _order_stats(size: int, probs) -> list[int]:
    """The positions in sorted order that `_quantiles_from` and `_median_from` read."""
    k, _ = _type7(size, probs)
    return sorted({*(k - 1), *k, (size - 1) // 2, size // 2})


def _type7(size: int, probs):
    """scipy's mquantiles(alphap=1, betap=1) (R's type 7): lower order statistics k and weights."""
    p = np.atleast_1d(np.asarray(probs, dtype=float))
    m = 1.0 + p * (1.0 - 1.0 - 1.0)
    aleph = size * p + m
    k = np.floor(aleph.clip(1, size - 1)).astype(int)
    gamma = (aleph - k).clip(0, 1)
    return k, gamma


def _quantiles_from(part: np.ndarray, probs) -> list[np.ndarray]:
    """Quantiles of each row of `part`, sorted at least at the positions `_order_stats` names, computed
    as mquantiles does: (1 - gamma) x[k-1] + gamma x[k]. (Not np.quantile: when x[k-1] = x[k] this
    can fall an ulp below them, which decides the tail indicator.)"""
    k, gamma = _type7(part.shape[1], probs)
    return [(1.0 - g) * part[:, kk - 1] + g * part[:, kk] for kk, g in zip(k, gamma)]


def _median_from(part: np.ndarray) -> np.ndarray:
    """np.median of each row of `part` (the middle value, or the mean of the two middle values)."""
    size = part.shape[1]
    if size % 2:
        return part[:, size // 2].copy()
    return part[:, size // 2 - 1 : size // 2 + 1].mean(axis=-1)


def _min(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Python's min(a, b) elementwise (NaN handling included)."""
    return np.where(b < a, b, a)


def _max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Python's max(a, b) elementwise (NaN handling included)."""
    return np.where(b > a, b, a)


def _block_diagnostics(x: np.ndarray) -> dict[str, np.ndarray]:
    """`_multichain_statistics(focus="mean")` of each scalar of x (scalar, chain, draw), no NaN, >= 4 draws."""
    n_scalar, n_chain, n_draw = x.shape
    flat = x.reshape(n_scalar, -1)
    size = flat.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        split = _split(x)
        z_split, order, ordered = _z_scale(split)
        # with an even number of draws the split chains hold every draw: their sort serves the
        # quantiles and the median too; with an odd number the middle draws are missing from it
        part = ordered if n_draw % 2 == 0 else np.partition(flat, _order_stats(size, TAIL_PROBS), axis=-1)

        low, high = _quantiles_from(part, TAIL_PROBS)
        ess_low = _ess(_split((x <= low[:, None, None]).astype(float)))
        ess_high = _ess(_split((x <= high[:, None, None]).astype(float)))
        ess_tail = _min(ess_low, ess_high)

        if n_chain < 2:
            r_hat = np.full(n_scalar, np.nan)
        else:
            # |split draw - median|: in the order of the sorted split draws these decrease, then increase,
            # so a stable sort (timsort) ranks them by merging two runs
            folded = np.abs(ordered - _median_from(part)[:, None])
            perm = np.argsort(folded, axis=-1, kind="stable")
            z_fold = _normal_scores(np.take_along_axis(order, perm, axis=-1), np.take_along_axis(folded, perm, axis=-1))
            r_hat = _max(_rhat(z_split), _rhat(z_fold.reshape(split.shape)))

        ess_mean = _ess(split)
        sims_c2 = (x - flat.mean(axis=-1)[:, None, None]) ** 2
        sims_c2_sum = sims_c2.sum(axis=(1, 2))
        mcse_mean = np.sqrt(sims_c2_sum / (size - 1) / ess_mean)

        ess_bulk = _ess(z_split)

        evar = sims_c2_sum / size
        ess_sims = _ess(_split(sims_c2))
        # evar ** 2 of a numpy scalar is libm's pow, which differs from evar * evar in the last bit
        # now and then; float_power calls pow too
        varvar = ((sims_c2**2).mean(axis=(1, 2)) - np.float_power(evar, 2)) / ess_sims
        mcse_sd = np.sqrt(varvar / evar / 4)
    return {"mcse_mean": mcse_mean, "mcse_sd": mcse_sd, "ess_bulk": ess_bulk, "ess_tail": ess_tail, "r_hat": r_hat,
            "ess_mean": ess_mean}
