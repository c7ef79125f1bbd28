"""Interim looks: stop an active arm of a simulated trial early for futility or efficacy, and the
sequential decision per arm.

Enrolment: uniform accrual at `accrual_per_week` participants per week (default: n_total / primary week,
so enrolment takes as long as the treatment period). Participants enter in an order that interleaves the
arms in proportion to the allocation (as permuted blocks do); participant k (k = 0..N-1 in that order)
enters at week k / rate and has the visits scheduled up to (time - entry) by a given calendar time,
cut short by their dropout.

A look happens at a calendar week: given directly (`weeks`), or at information fraction f, when
ceil(f N) participants have reached the primary visit (scheduled), at week (ceil(f N) - 1) / rate +
primary week. It analyses the data then available (the same MMRM or ANCOVA of all arms as the final
analysis: participants still short of the primary visit contribute their earlier visits to the MMRM),
giving for each active arm still running the interim posterior mean m_I and SD s_I of its effect, and
predicts from the same data the final analysis' posterior SD s_F and degrees of freedom
(`expected_final_counts`, `mmrm_effect`): each participant's number of attended visits at the final
analysis is known for those already seen to drop out, and follows the design's dropout by visit and
arm (conditional on the visits attended so far) for the others and for those still to enrol (none
more in an arm already stopped); the MMRM's posterior SD is then computed for those expected pattern
counts with Sigma at the interim REML estimate (the ANCOVA's: s_I scaled by the expected growth in
completers of the control arm and that arm). Under the normal approximation the final posterior mean
is predicted as
    m_F ~ Normal(m_I, s_I^2 - s_F^2)
and the final analysis succeeds when m_F <= c, c = -t_q s_F (t_q the Student-t quantile of the final
decision's threshold on its degrees of freedom; with the dual criterion also m_F <= -MCID - t_p s_F), so
    PPoS = Phi((c - m_I) / sqrt(s_I^2 - s_F^2)).

Each active arm stops on its own: for efficacy when its interim P(benefit) > `efficacy` (a success for
that arm), for futility (it is dropped) when its PPoS < `futility`; an arm whose analysis fails at a look
does not stop there. A stopped arm enrols nobody after the look (those who entered by then are followed
up and stay in the later analyses of the other arms); the other arms and the control arm continue, with
their accrual times unchanged. The trial ends when every active arm has stopped (then the control arm
stops enrolling too) or at the final analysis, which decides the arms still running, on the data of
every participant enrolled. With one active arm this is the two-arm rule: the trial stops when its arm
does.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from .analysis import analyse
from .design import AnalysisSettings, InterimSettings, PlannedTrial, SimulatedTrials, accrual_rate, final_week


def entry_weeks(trial: PlannedTrial, rate: float) -> np.ndarray:
    """(N,) entry week of each participant (ordered by arm, control first, as SimulatedTrials.arm)."""
    key = np.concatenate([(np.arange(n) + 0.5) / n for n in trial.arm_sizes])
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


def expected_final_counts(sim: SimulatedTrials, trial: PlannedTrial, entry: np.ndarray, week: float, closed: np.ndarray | None = None) -> np.ndarray:
    """(S, V, K): expected number of participants per arm (control first) who will have attended exactly
    the first p + 1 post-baseline visits at the final analysis, predicted at calendar week `week`.

    A participant seen to drop out (fewer visits attended than scheduled by then) keeps their count; one
    still in the trial after r visits (including those yet to enrol, r = 0) attends exactly j >= r visits
    with probability (S_a(j) - S_a(j + 1)) / S_a(r), S_a(j) the design's share of arm a attending visit j.
    `closed` (S, N): participants who will never enrol (their arm stopped before their entry) count nowhere."""
    reached = visits_reached(trial, entry, week)
    att = np.minimum(sim.attended, reached[None, :])  # (S, N)
    v = len(trial.post_weeks)
    k = trial.n_active + 1
    surv = np.concatenate([np.ones((k, 1)), 1 - trial.cumulative_dropout(), np.zeros((k, 1))], axis=1)  # S_a(0..V+1)
    j = np.arange(v + 1)
    exact = surv[:, :-1] - surv[:, 1:]  # (K, V + 1): P(exactly j visits)
    table = np.where(j[None, None, :] >= j[None, :, None], exact[:, None, :] / surv[:, : v + 1, None], 0.0)  # (arm, r, j)
    arm = sim.arm
    dist = np.where((att >= reached[None, :])[:, :, None], table[arm[None, :], att], np.eye(v + 1)[att])  # (S, N, V + 1)
    if closed is not None:
        dist = np.where(closed[:, :, None], 0.0, dist)
    counts = np.einsum("snj,na->sja", dist, np.eye(k)[arm])
    return counts[:, 1:, :]


def success_bound(final: dict, analysis: AnalysisSettings) -> np.ndarray:
    """The largest final posterior mean that still succeeds, per trial and arm (`final`: the final analysis'
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


def interim_analysis(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, entry: np.ndarray, week: float,
                     closed: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The analysis of the data available at calendar week `week`, with the final analysis' posterior SD
    and degrees of freedom predicted from it (`final_sd`, `final_df`) and the PPoS (`ppos`; NaN where the
    interim analysis failed), per trial and active arm. `closed` (S, N): participants never enrolled
    because their arm stopped earlier."""
    attended = attended_at(sim, trial, entry, week)
    if closed is not None:
        attended = np.where(closed, 0, attended)
    counts = expected_final_counts(sim, trial, entry, week, closed)
    res = analyse(sim, analysis, attended=attended, final_counts=counts)
    ok = res["ok"] & np.isfinite(res["final_sd"])
    p = ppos(res["post_mean"], res["post_sd"], res["final_sd"], success_bound({"df": res["final_df"], "post_sd": res["final_sd"]}, analysis))
    res["ppos"] = np.where(ok, p, np.nan)
    res["ok"] = ok
    return res


def stage_results(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, interim: InterimSettings):
    """The final analysis and every look's analysis of every simulated trial (whether or not it, or any of
    its arms, would have stopped earlier; every arm enrolling to the end): (final, [look 1, look 2, ...])."""
    entry = entry_weeks(trial, accrual_rate(trial, interim))
    return analyse(sim, analysis), [interim_analysis(sim, trial, analysis, entry, w) for w in look_weeks(trial, interim)]


def closed_participants(arm: np.ndarray, entry: np.ndarray, stop_week: np.ndarray) -> np.ndarray:
    """(S, N): participants who never enrol because their active arm stopped (at `stop_week` (S, A), inf while
    running) before their entry week."""
    arm_stop = np.concatenate([np.full((len(stop_week), 1), np.inf), stop_week], axis=1)[:, arm]
    return entry[None, :] > arm_stop + 1e-9


def enrolled_by_arm(trial: PlannedTrial, entry: np.ndarray, stop_week: np.ndarray) -> np.ndarray:
    """(S, K): participants enrolled per arm (control first) when active arm a stops at stop_week[:, a]
    (inf: enrols to the end) and the control arm stops when every active arm has."""
    arm = trial.arm_of()
    stops = np.concatenate([stop_week.max(axis=1, keepdims=True), stop_week], axis=1)  # (S, K)
    out = np.empty(stops.shape)
    for k, size in enumerate(trial.arm_sizes):
        times = np.sort(entry[arm == k])
        out[:, k] = np.where(np.isfinite(stops[:, k]), np.searchsorted(times, stops[:, k] + 1e-9, side="right"), size)
    return out


RESULT_KEYS = ("post_mean", "post_sd", "p_benefit", "p_mcid", "width", "estimate", "se", "df", "ok", "completers")


def sequential(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, interim: InterimSettings) -> dict[str, np.ndarray]:
    """Per trial and active arm (S, A), the final analysis' results replaced, for an arm stopped at a look,
    by that look's (module docstring); for the arms still running when another arm stopped, the final
    analysis of the data of everyone enrolled. Also, per arm: `stop_look` (0 = ran to the end, k =
    stopped at look k), `stop_efficacy`, `stop_futility`, `duration` (week of the arm's decision), `ppos`
    (S, looks, A; NaN where the look was not reached or failed), `enrolled_arm` (S, K, control first);
    per trial: `enrolled`, `duration` of the trial (`trial_duration`), `trial_stop_look` (0 = some arm ran
    to the final analysis, else the look at which the last arm stopped), `trial_stop_efficacy` (ended
    at a look with at least one arm stopped for efficacy) and `trial_completers` (participants at the
    primary visit in the data of the analysis that ended the trial)."""
    final = analyse(sim, analysis)
    s, _ = sim.attended.shape
    a_n = sim.n_active
    entry = entry_weeks(trial, accrual_rate(trial, interim))
    weeks = look_weeks(trial, interim)
    out = {k: np.array(v, copy=True) for k, v in final.items()}
    stop_look = np.zeros((s, a_n), int)
    stop_eff = np.zeros((s, a_n), bool)
    stop_week = np.full((s, a_n), np.inf)
    pp = np.full((s, len(weeks), a_n), np.nan)
    completers = sim.completed.sum(axis=1)
    for k, week in enumerate(weeks, start=1):
        running = stop_look == 0
        if not running.any():
            break
        partial = running.any(axis=1) & ~running.all(axis=1)  # trials going on with some arm stopped
        closed = closed_participants(sim.arm, entry, stop_week) & partial[:, None] if partial.any() else None
        res = interim_analysis(sim, trial, analysis, entry, week, closed)
        seen = attended_at(sim, trial, entry, week) > sim.primary
        now = (seen if closed is None else seen & ~closed).sum(axis=1)
        ok = res["ok"]
        pp[:, k - 1] = np.where(running & ok, res["ppos"], np.nan)
        eff = running & ok & (res["p_benefit"] > interim.efficacy)
        fut = running & ok & ~eff & (res["ppos"] < interim.futility)
        stop = eff | fut
        stop_look[stop] = k
        stop_eff |= eff
        stop_week[stop] = week
        for key in RESULT_KEYS:
            out[key] = np.where(stop, res[key], out[key])
        out["success"] = np.where(stop, eff, out["success"])
        completers = np.where(running.any(axis=1) & (stop_look > 0).all(axis=1), now, completers)  # the trial ends at this look
    ended = stop_look > 0
    partial = ended.any(axis=1) & ~ended.all(axis=1)
    if partial.any():  # the final analysis without the participants the stopped arms never enrolled
        rows = np.flatnonzero(partial)
        sub = sim.take(rows)
        attended = np.where(closed_participants(sim.arm, entry, stop_week[rows]), 0, sub.attended)
        res = analyse(sub, analysis, attended=attended)
        for key in (*RESULT_KEYS, "success"):
            out[key][rows] = np.where(ended[rows], out[key][rows], res[key])
        completers[rows] = (attended > sim.primary).sum(axis=1)
    everything = ended.all(axis=1)
    last_week = final_week(trial, interim)
    enrolled_arm = enrolled_by_arm(trial, entry, stop_week)
    out.update(
        stop_look=stop_look, stop_efficacy=stop_eff, stop_futility=ended & ~stop_eff, ppos=pp,
        enrolled_arm=enrolled_arm, enrolled=enrolled_arm.sum(axis=1), duration=np.where(ended, stop_week, last_week),
        trial_duration=np.where(everything, np.where(everything[:, None], stop_week, -np.inf).max(axis=1), last_week),
        trial_stop_look=np.where(everything, stop_look.max(axis=1), 0), trial_stop_efficacy=everything & stop_eff.any(axis=1),
        trial_completers=completers,
    )
    return out
