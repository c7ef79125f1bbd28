"""Posterior predictive checks: pure functions of InferenceData returning tables.

Every check compares a statistic T of the observed scores with its distribution over the
replicated scores (`posterior_predictive['y']`), mapped to participants, arms and weeks through
`constant_data` (`obs_participant`, `obs_week`, and the arm of each participant: `arm_indicator`, participant x
active arm, or the trial's `arm_idx`). Means and rates are checked in every arm. The posterior predictive p-value is
P(T_rep > T_obs) + P(T_rep = T_obs) / 2; a check is flagged when it falls outside [PPC_TAIL, 1 - PPC_TAIL], i.e. the
observed statistic lies outside the central 1 - 2 PPC_TAIL of the replicated ones.

Response is a reduction of at least RESPONSE_REDUCTION (50%) from the participant's own baseline;
remission a score at or below the cut-off (MADRS <= 7 by default, a parameter). Both are computed
in each replicated data set from its own baseline and visit, among participants observed at both.

LOO-PIT: the leave-one-out probability integral transform of each observation, uniform when the
predictive distribution is calibrated; flagged when a Kolmogorov-Smirnov test of uniformity gives
p < LOO_PIT_P_MIN (a U shape means predictions too narrow, a hump too wide).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import arviz as az
import numpy as np
import pandas as pd
from scipy import stats

from .loo import as_units_by_draws, per_fit, pointwise_psis, psis, relative_efficiency

PPC_TAIL = 0.005  # flag when P(T_rep >= T_obs) < PPC_TAIL or > 1 - PPC_TAIL (outside the central 99%)
INTERVAL_PROB = 0.94  # width of the replicated intervals shown in tables and figures
RESPONSE_REDUCTION = 0.5  # response: at least this fractional reduction from baseline
REMISSION_CUTOFF = 7.0  # remission: score at or below this (MADRS <= 7 as in the NAC trial; others use 10 or 12)
LOO_PIT_P_MIN = 0.01  # flag LOO-PIT when the KS test of uniformity gives p below this
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  # replicated score distribution at each visit


@dataclass
class ObsIndex:
    """Which participant, week and arm each observed score belongs to."""

    y: np.ndarray  # observed scores (n_obs)
    participant: np.ndarray  # participant index per observation
    week: np.ndarray  # week per observation
    arm_index: np.ndarray  # per observation: 0 the control arm, a the a-th active arm (arm_labels[a])
    weeks: np.ndarray  # sorted distinct weeks
    arm_labels: tuple[str, ...]  # every arm, the control first

    def arm(self) -> np.ndarray:
        return np.asarray(self.arm_labels, dtype=object)[self.arm_index]


def arm_labels(idata: az.InferenceData) -> tuple[str, ...]:
    """Every arm's label, the control first, from the fit's data summary (the active arms: one label or a list),
    else from the fit's active_arm coordinate, else generic names."""
    raw = idata.posterior.attrs.get("data_summary")
    try:
        info = json.loads(raw) if isinstance(raw, str) else (raw or {})
        arms = info.get("arms", {})
        if arms.get("control") and arms.get("treatment"):
            active = arms["treatment"]
            return (str(arms["control"]), *([str(active)] if isinstance(active, str) else [str(a) for a in active]))
    except (json.JSONDecodeError, AttributeError):
        pass
    if "active_arm" in idata.posterior.coords:
        return ("control", *[str(a) for a in idata.posterior["active_arm"].values])
    return "control", "treatment"


def participant_arms(idata: az.InferenceData) -> np.ndarray | None:
    """Each participant's arm index (0 the control arm, a the a-th active arm) as the fit saw them: from
    constant_data 'arm_indicator' (participant x active arm), or a two-arm fit's 'treated'; None without either."""
    if "constant_data" not in idata.groups():
        return None
    const = idata.constant_data
    if "arm_indicator" in const:
        ind = np.asarray(const["arm_indicator"].values, dtype=float).reshape(const["arm_indicator"].shape[0], -1)
        return np.where(ind.max(axis=1) > 0.5, ind.argmax(axis=1) + 1, 0).astype(int)
    if "treated" in const:
        return (np.asarray(const["treated"].values, dtype=float) > 0.5).astype(int)
    return None


def obs_index(idata: az.InferenceData, arms: np.ndarray | None = None, labels: tuple[str, ...] | None = None) -> ObsIndex:
    """Map observations to participants, weeks and arms; `arms` (per participant, 0 the control arm, a the a-th active
    arm) overrides the arms in constant_data (`participant_arms`); `labels`: every arm, the control first."""
    if "constant_data" not in idata.groups() or "obs_participant" not in idata.constant_data or "obs_week" not in idata.constant_data:
        raise ValueError("the fit has no constant_data with obs_participant and obs_week: cannot map observations to participants and weeks")
    const = idata.constant_data
    pid = np.asarray(const["obs_participant"].values, dtype=int)
    week = np.asarray(const["obs_week"].values, dtype=float)
    if arms is None:
        arms = participant_arms(idata)
        if arms is None:
            raise ValueError("the fit's constant_data has no arm per participant ('arm_indicator'); pass arms= explicitly")
    arms = np.asarray(arms, dtype=int)
    labels = tuple(labels or arm_labels(idata))
    if arms.max(initial=0) >= len(labels):
        raise ValueError(f"participants of arm index {int(arms.max())} but only the arms {list(labels)}")
    y = np.asarray(idata.observed_data["y"].values, dtype=float)
    return ObsIndex(y=y, participant=pid, week=week, arm_index=arms[pid], weeks=np.unique(week), arm_labels=labels)


OBSERVATION_MAJOR_MAX = 2**28  # bytes: replicated scores up to this size are held observation by observation (`replicated`)


def replicated(idata: az.InferenceData) -> np.ndarray:
    """Replicated scores as (draws, n_obs) float64, draws chain by chain (the order of the log-likelihood's stacked draws),
    once per InferenceData. Up to OBSERVATION_MAJOR_MAX bytes they are held observation by observation (Fortran order:
    each observation's draws contiguous), so that the checks' selections of observations (by week, arm, visit) and the
    LOO-PIT's blocks of observations are contiguous copies; numpy gives a selection of columns of either order the same
    layout, so every statistic is the same to the last bit. Larger: the stored values as they are (no copy)."""
    if "posterior_predictive" not in idata.groups() or "y" not in idata.posterior_predictive:
        raise ValueError("the fit has no posterior_predictive['y']")

    def compute():
        rep = idata.posterior_predictive["y"]
        values = rep.transpose("chain", "draw", ...).values
        values = values.reshape(values.shape[0] * values.shape[1], -1)
        if values.shape[0] * values.shape[1] * 8 > OBSERVATION_MAJOR_MAX:
            return np.asarray(values, dtype=float)
        return observation_major(values)

    return per_fit(idata, "replicated", compute)


def observation_major(values: np.ndarray, rows: int = 512, cols: int = 16) -> np.ndarray:
    """`values` (draws, obs) as a float64 Fortran-order array: the transposed copy, made tile by tile (rows x cols
    tiles stay in the cache: twice as fast as numpy's strided copy)."""
    out = np.empty(values.shape[::-1])
    for lo in range(0, values.shape[0], rows):
        for c in range(0, values.shape[1], cols):
            out[c : c + cols, lo : lo + rows] = values[lo : lo + rows, c : c + cols].T
    return out.T


def _summarise(obs: float, rep: np.ndarray, prob: float = INTERVAL_PROB) -> dict:
    lo, hi = np.quantile(rep, [(1 - prob) / 2, 1 - (1 - prob) / 2])
    # mid-p: ties (common for rates, e.g. no remission at week 2 in data and replications) count half
    p = float(np.mean(rep > obs) + 0.5 * np.mean(rep == obs))
    return {"observed": obs, "replicated_mean": float(rep.mean()), "rep_lo": float(lo), "rep_hi": float(hi), "ppp": p, "flag": bool(p < PPC_TAIL or p > 1 - PPC_TAIL)}


def trajectory_check(idata: az.InferenceData, index: ObsIndex | None = None, rep: np.ndarray | None = None) -> pd.DataFrame:
    """Observed vs replicated mean score by arm and week (intervals over replications)."""
    ix = index or obs_index(idata)
    rep = replicated(idata) if rep is None else rep
    rows = []
    for a, label in enumerate(ix.arm_labels):
        for w in ix.weeks:
            sel = (ix.arm_index == a) & (ix.week == w)
            if not sel.any():
                continue
            rows.append({"arm": label, "week": int(w), "n_obs": int(sel.sum()), "statistic": "mean", **_summarise(float(ix.y[sel].mean()), rep[:, sel].mean(axis=1))})
    return pd.DataFrame(rows)


def visit_distribution(idata: az.InferenceData, index: ObsIndex | None = None, rep: np.ndarray | None = None) -> pd.DataFrame:
    """Observed vs replicated score distribution at each visit: SD (checked) and quantiles (shown)."""
    ix = index or obs_index(idata)
    rep = replicated(idata) if rep is None else rep
    rows = []
    for w in ix.weeks:
        sel = ix.week == w
        at_week = rep[:, sel]
        row = {"week": int(w), "n_obs": int(sel.sum()), "statistic": "sd", **_summarise(float(ix.y[sel].std(ddof=1)), at_week.std(axis=1, ddof=1))}
        # the quantiles of every replicated score at the week: numpy's, from the sorted scores (one sort is quicker than
        # the selection np.quantile makes; the same order statistics, the same numbers)
        observed, replicas = np.quantile(ix.y[sel], QUANTILES), np.quantile(np.sort(at_week, axis=None), QUANTILES)
        for q, o, r in zip(QUANTILES, observed, replicas):
            row[f"observed_q{q:g}"] = float(o)
            row[f"replicated_q{q:g}"] = float(r)
        rows.append(row)
    return pd.DataFrame(rows)


def rate_check(idata: az.InferenceData, index: ObsIndex | None = None, remission_cutoff: float = REMISSION_CUTOFF, rep: np.ndarray | None = None) -> pd.DataFrame:
    """Observed vs replicated response and remission rates by arm at each post-baseline week.

    Among participants observed at baseline (the first week) and at the week: response when the
    score is at most (1 - RESPONSE_REDUCTION) x baseline; remission when at most the cut-off.
    """
    ix = index or obs_index(idata)
    rep = replicated(idata) if rep is None else rep
    base_week = ix.weeks[0]
    base_row = {int(p): i for i, p in enumerate(ix.participant) if ix.week[i] == base_week}
    rows = []
    for w in ix.weeks[1:]:
        visit = [i for i in np.nonzero(ix.week == w)[0] if int(ix.participant[i]) in base_row]
        visit = np.asarray(visit, dtype=int)
        if not len(visit):
            continue
        base = np.asarray([base_row[int(ix.participant[i])] for i in visit], dtype=int)
        arm = ix.arm_index[visit]
        for a, label in enumerate(ix.arm_labels):
            sel = arm == a
            if not sel.any():
                continue
            v, b = visit[sel], base[sel]
            at_visit = rep[:, v]
            for name, obs_hit, rep_hit in (
                ("response", ix.y[v] <= (1 - RESPONSE_REDUCTION) * ix.y[b], at_visit <= (1 - RESPONSE_REDUCTION) * rep[:, b]),
                (f"remission (<= {remission_cutoff:g})", ix.y[v] <= remission_cutoff, at_visit <= remission_cutoff),
            ):
                rows.append({"arm": label, "week": int(w), "n_obs": int(sel.sum()), "statistic": name, **_summarise(float(obs_hit.mean()), rep_hit.mean(axis=1))})
    return pd.DataFrame(rows)


def pit_inputs(idata: az.InferenceData):
    """(replicated 'y' (draws, obs) as `replicated` holds them, observed 'y') for the LOO-PIT of continuous scores, summed
    in the pass of diagnostics.loo `pointwise_psis`; (None, None) without them, or for integer scores (ArviZ smooths
    those first: `loo_pit_values`)."""
    if "posterior_predictive" not in idata.groups() or "y" not in idata.posterior_predictive or "observed_data" not in idata.groups():
        return None, None
    y = np.asarray(idata.observed_data["y"].values)
    if y.dtype.kind == "i" or idata.posterior_predictive["y"].dtype.kind == "i":
        return None, None
    return replicated(idata), y


def loo_pit_log_weights(idata: az.InferenceData) -> np.ndarray:
    """PSIS log weights of `y` (observations, draws) as az.loo_pit computes them (normalised; the relative efficiency
    of diagnostics.loo `relative_efficiency`), computed once per InferenceData: what az.loo_pit is given for integer
    scores, which it smooths first. Continuous scores never hold them whole (`loo_pit_values`)."""
    return per_fit(idata, "weights:y", lambda: psis(-as_units_by_draws(idata.log_likelihood["y"]), relative_efficiency(idata))[0])


def loo_pit_values(idata: az.InferenceData) -> np.ndarray:
    """LOO-PIT of every observation: the PSIS-weighted fraction of replications at or below it, min(1, sum_s w_is
    [y_rep_is <= y_i]) (az.loo_pit's arithmetic), summed in the pass that computes the weights of the visit-level LOO
    on `y` (diagnostics.loo `pointwise_psis`, a block of observations at a time). Integer scores: az.loo_pit itself,
    given those weights."""
    rep, _ = pit_inputs(idata)
    if rep is None:  # ArviZ smooths integer data first
        if "posterior_predictive" not in idata.groups() or "y" not in idata.posterior_predictive:
            raise ValueError("the fit has no posterior_predictive['y']")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(az.loo_pit(idata, y="y", log_weights=loo_pit_log_weights(idata)), dtype=float).ravel()
    return pointwise_psis(idata, "y", pit=lambda: pit_inputs(idata)).pit


def loo_pit_summary(pit: np.ndarray) -> dict:
    """Uniformity of the LOO-PIT values: KS statistic and p-value, share in the outer 5% tails, flag."""
    ks = stats.kstest(pit, "uniform")
    return {
        "n_obs": int(pit.size),
        "ks_statistic": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "share_outer_10pct": float(np.mean((pit < 0.05) | (pit > 0.95))),  # 0.10 when calibrated
        "pit_sd": float(pit.std()),  # 0.289 when uniform; larger: predictions too narrow, smaller: too wide
        "flag": bool(ks.pvalue < LOO_PIT_P_MIN),
    }


def loo_pit_check(idata: az.InferenceData) -> dict:
    """`loo_pit_summary` of the fit's LOO-PIT values."""
    return loo_pit_summary(loo_pit_values(idata))


@dataclass
class PPCResult:
    trajectory: pd.DataFrame
    visits: pd.DataFrame
    rates: pd.DataFrame
    loo_pit: dict
    pit: np.ndarray | None = None  # the LOO-PIT values (the figure's ECDF)

    def flags(self) -> list[str]:
        """Plain-language list of every flagged check (empty: the model reproduces these features)."""
        out = []
        for _, r in self.trajectory[self.trajectory["flag"]].iterrows():
            out.append(f"mean score, {r['arm']} week {r['week']}: observed {r['observed']:.2f}, replicated {r['rep_lo']:.2f} to {r['rep_hi']:.2f} (ppp {r['ppp']:.3f})")
        for _, r in self.visits[self.visits["flag"]].iterrows():
            out.append(f"score SD at week {r['week']}: observed {r['observed']:.2f}, replicated {r['rep_lo']:.2f} to {r['rep_hi']:.2f} (ppp {r['ppp']:.3f})")
        for _, r in self.rates[self.rates["flag"]].iterrows() if len(self.rates) else []:
            out.append(f"{r['statistic']} rate, {r['arm']} week {r['week']}: observed {r['observed']:.1%}, replicated {r['rep_lo']:.1%} to {r['rep_hi']:.1%} (ppp {r['ppp']:.3f})")
        if self.loo_pit["flag"]:
            shape = "too narrow (U-shaped)" if self.loo_pit["pit_sd"] > 0.289 else "too wide or shifted"
            out.append(f"LOO-PIT not uniform (KS p = {self.loo_pit['ks_p']:.2g}): predictive distributions {shape}")
        return out

    def text(self) -> str:
        flags = self.flags()
        head = "posterior predictive checks: " + ("no check flagged" if not flags else f"{len(flags)} flagged")
        return "\n".join([head] + [f"  - {f}" for f in flags])


def run_ppc(idata: az.InferenceData, arms: np.ndarray | None = None, labels: tuple[str, ...] | None = None,
            remission_cutoff: float = REMISSION_CUTOFF, index: ObsIndex | None = None, rep: np.ndarray | None = None) -> PPCResult:
    """Every check; arms, labels: as for `obs_index` (or the `index` itself); rep: `replicated(idata)` if at hand."""
    ix = index or obs_index(idata, arms, labels)
    rep = replicated(idata) if rep is None else rep
    pit = loo_pit_values(idata)
    return PPCResult(
        trajectory=trajectory_check(idata, ix, rep),
        visits=visit_distribution(idata, ix, rep),
        rates=rate_check(idata, ix, remission_cutoff, rep),
        loo_pit=loo_pit_summary(pit),
        pit=pit,
    )
