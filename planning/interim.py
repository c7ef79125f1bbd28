"""Interim looks: stop a simulated trial early for futility or efficacy, and its sequential decision.

Enrolment: uniform accrual at `accrual_per_week` participants per week (default: n_total / primary week,
so enrolment takes as long as the treatment period). Participants enter in an order that interleaves the
arms in proportion to the allocation (as permuted blocks do); participant k (k = 0..N-1 in that order)
enters at week k / rate and has the visits scheduled up to (time - entry) by a given calendar time,
cut short by their dropout.

A look happens at a calendar week: given directly (`weeks`), or at information fraction f, when
ceil(f N) participants have reached the primary visit (scheduled), at week (ceil(f N) - 1) / rate +
primary week. It analyses the data then available (the same MMRM or ANCOVA as the final analysis:
participants still short of the primary visit contribute their earlier visits to the MMRM), giving
the interim posterior mean m_I and SD s_I of the effect, and predicts from the same data the final
analysis' posterior SD s_F and degrees of freedom (`expected_final_counts`, `mmrm_effect`): each
participant's number of attended visits at the final analysis is known for those already seen to drop
out, and follows the design's dropout by visit (conditional on the visits attended so far) for the
others and for those still to enrol; the MMRM's posterior SD is then computed for those expected
pattern counts with Sigma at the interim REML estimate (the ANCOVA's: s_I scaled by the expected
growth in completers). Under the normal approximation the final posterior mean is predicted as
    m_F ~ Normal(m_I, s_I^2 - s_F^2)
and the final analysis succeeds when m_F <= c, c = -t_q s_F (t_q the Student-t quantile of the final
decision's threshold on its degrees of freedom; with the dual criterion also m_F <= -MCID - t_p s_F), so
    PPoS = Phi((c - m_I) / sqrt(s_I^2 - s_F^2)).
The trial stops for efficacy when the interim P(benefit) > `efficacy`, for futility when PPoS <
`futility`; a look whose analysis fails does not stop the trial. Enrolment stops at the look, so a
trial stopped there enrols those who entered by then.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from .analysis import analyse
from .design import AnalysisSettings, InterimSettings, PlannedTrial, SimulatedTrials, accrual_rate, final_week


def entry_weeks(trial: PlannedTrial, rate: float) -> np.ndarray:
    """(N,) entry week of each participant (control first, then treatment, as SimulatedTrials.treated)."""
    nc, nt = trial.n_control, trial.n_treatment
    key = np.concatenate([(np.arange(nc) + 0.5) / nc, (np.arange(nt) + 0.5) / nt])
    order = np.argsort(key, kind="stable")  # arms interleaved in proportion to the allocation
    rank = np.empty(len(key), int)
    rank[order] = np.arange(len(key))
    return rank / rate


def look_weeks(trial: PlannedTrial, interim: InterimSettings) -> np.ndarray:
    """Calendar week of each look (weeks from the first participant's entry)."""
    if interim.weeks:
        return np.asarray(interim.weeks, float)
    rate = accrual_rate(trial, interim)
    m = np.array([math.ceil(f * trial.n_total - 1e-9) for f in interim.fractions])
    return (np.maximum(m, 1) - 1) / rate + trial.primary_week


def look_information(trial: PlannedTrial, interim: InterimSettings) -> np.ndarray:
    """Per look: the fraction of participants whose primary visit is scheduled by then (attended or not)."""
    entry = entry_weeks(trial, accrual_rate(trial, interim))
    return np.array([float((entry + trial.primary_week <= w + 1e-9).mean()) for w in look_weeks(trial, interim)])


def visits_reached(trial: PlannedTrial, entry: np.ndarray, week: float) -> np.ndarray:
    """(N,) post-baseline visits scheduled by calendar week `week`."""
    post = np.asarray(trial.post_weeks, float)
    return (post[None, :] <= week - entry[:, None] + 1e-9).sum(axis=1)


def attended_at(sim: SimulatedTrials, trial: PlannedTrial, entry: np.ndarray, week: float) -> np.ndarray:
    """(S, N) visits attended by calendar week `week`: those scheduled by then, cut short by dropout."""
    return np.minimum(sim.attended, visits_reached(trial, entry, week)[None, :])


def expected_final_counts(sim: SimulatedTrials, trial: PlannedTrial, entry: np.ndarray, week: float) -> np.ndarray:
    """(S, V, 2): expected number of participants per arm (control, treatment) who will have attended
    exactly the first p + 1 post-baseline visits at the final analysis, predicted at calendar week `week`.

    A participant seen to drop out (fewer visits attended than scheduled by then) keeps their count; one
    still in the trial after r visits (including those yet to enrol, r = 0) attends exactly j >= r visits
    with probability (S_a(j) - S_a(j + 1)) / S_a(r), S_a(j) the design's share of arm a attending visit j."""
    reached = visits_reached(trial, entry, week)
    att = np.minimum(sim.attended, reached[None, :])  # (S, N)
    v = len(trial.post_weeks)
    surv = np.concatenate([np.ones((2, 1)), 1 - trial.cumulative_dropout(), np.zeros((2, 1))], axis=1)  # S_a(0..V+1)
    j = np.arange(v + 1)
    exact = surv[:, :-1] - surv[:, 1:]  # (2, V + 1): P(exactly j visits)
    table = np.where(j[None, None, :] >= j[None, :, None], exact[:, None, :] / surv[:, : v + 1, None], 0.0)  # (arm, r, j)
    arm = sim.treated.astype(int)
    dist = np.where((att >= reached[None, :])[:, :, None], table[arm[None, :], att], np.eye(v + 1)[att])  # (S, N, V + 1)
    counts = np.einsum("snj,na->sja", dist, np.eye(2)[arm])
    return counts[:, 1:, :]


def success_bound(final: dict, analysis: AnalysisSettings) -> np.ndarray:
    """The largest final posterior mean that still succeeds, per trial (`final`: the final analysis'
    posterior SD `post_sd` and degrees of freedom `df`, realised or predicted)."""
    df, sd = final["df"], final["post_sd"]
    c = -special.stdtrit(df, analysis.threshold) * sd
    if analysis.dual:
        c = np.minimum(c, -analysis.mcid - special.stdtrit(df, analysis.mcid_prob) * sd)
    return c


def ppos(interim_mean: np.ndarray, interim_sd: np.ndarray, final_sd: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Predictive probability that the final posterior mean is at most `bound`, the final posterior mean
    being Normal(interim mean, interim var - final var); a point mass at the interim mean if that is <= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):  # failed analyses (infinite SDs) are masked by the caller
        var = np.maximum(interim_sd**2 - final_sd**2, 0.0)
        z = (bound - interim_mean) / np.sqrt(var)
    z = np.where(var > 0, z, np.where(bound >= interim_mean, np.inf, -np.inf))
    return special.ndtr(z)


def interim_analysis(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, entry: np.ndarray, week: float) -> dict[str, np.ndarray]:
    """The analysis of the data available at calendar week `week`, with the final analysis' posterior SD
    and degrees of freedom predicted from it (`final_sd`, `final_df`) and the PPoS (`ppos`; NaN where the
    interim analysis failed)."""
    counts = expected_final_counts(sim, trial, entry, week)
    res = analyse(sim, analysis, attended=attended_at(sim, trial, entry, week), final_counts=counts)
    ok = res["ok"] & np.isfinite(res["final_sd"])
    p = ppos(res["post_mean"], res["post_sd"], res["final_sd"], success_bound({"df": res["final_df"], "post_sd": res["final_sd"]}, analysis))
    res["ppos"] = np.where(ok, p, np.nan)
    res["ok"] = ok
    return res


def stage_results(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, interim: InterimSettings):
    """The final analysis and every look's analysis of every simulated trial (whether or not it would
    have stopped earlier): (final, [look 1, look 2, ...])."""
    entry = entry_weeks(trial, accrual_rate(trial, interim))
    return analyse(sim, analysis), [interim_analysis(sim, trial, analysis, entry, w) for w in look_weeks(trial, interim)]


def sequential(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, interim: InterimSettings,
               stages=None) -> dict[str, np.ndarray]:
    """The final analysis' per-trial results replaced, for trials stopped at a look, by that look's; plus
    `stop_look` (0 = ran to the end, k = stopped at look k), `stop_efficacy`, `stop_futility`, `enrolled`,
    `duration` and `ppos` (S, looks; NaN where the look was not reached). `stages`: `stage_results`, when
    already computed."""
    final, looks = stage_results(sim, trial, analysis, interim) if stages is None else stages
    s, n = sim.attended.shape
    entry = entry_weeks(trial, accrual_rate(trial, interim))
    weeks = look_weeks(trial, interim)
    out = {k: np.array(v, copy=True) for k, v in final.items()}
    stop_look = np.zeros(s, int)
    stop_eff = np.zeros(s, bool)
    enrolled = np.full(s, float(n))
    duration = np.full(s, final_week(trial, interim))
    pp = np.full((s, len(weeks)), np.nan)
    for k, (week, res) in enumerate(zip(weeks, looks), start=1):
        running = stop_look == 0
        if not running.any():
            break
        ok = res["ok"]
        pp[:, k - 1] = np.where(running & ok, res["ppos"], np.nan)
        eff = running & ok & (res["p_benefit"] > interim.efficacy)
        fut = running & ok & ~eff & (res["ppos"] < interim.futility)
        stop = eff | fut
        stop_look[stop] = k
        stop_eff |= eff
        enrolled[stop] = float(min(n, (entry <= week + 1e-9).sum()))
        duration[stop] = week
        for key in ("post_mean", "post_sd", "p_benefit", "p_mcid", "width", "estimate", "se", "df", "ok", "completers"):
            out[key] = np.where(stop, res[key], out[key])
        out["success"] = np.where(stop, eff, out["success"])
    out.update(stop_look=stop_look, stop_efficacy=stop_eff, stop_futility=(stop_look > 0) & ~stop_eff, enrolled=enrolled, duration=duration, ppos=pp)
    return out
