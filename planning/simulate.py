"""Simulate whole future trials of a design from a parameter set.

Simulation (vectorised over S trials of one design): each simulated trial takes one parameter draw and
enrols the design's participants of every arm (control first, then each active arm), who must pass the entry screening on their baseline
score (and the enrichment threshold on a baseline biomarker, when the design enriches). Every scheduled
visit of every participant is drawn:

- from a trajectory model (planning.params.ParameterSet): baseline log biomarkers from the fitted marker
  distribution, participant effects, and the score at each scheduled week from the model's equation;
- from the MMRM (planning.params.MMRMParameters): the baseline score from the fitted trial's observed
  baseline distribution, and the change from baseline at every post-baseline visit from the MMRM's
  multivariate normal given the baseline.

Entry screening keeps only people whose baseline score is at least `entry_min` (people are redrawn until
eligible: exactly the conditional law given eligibility). A design with several sites (`sites`) spreads
each arm evenly over them (participant j of an arm at site j mod sites) and draws each simulated trial's
site offsets afresh, Normal(0, site SD) with the SD given (`site_sd`) or the parameter draw's (the
spread of the fitted site offsets), added where the fitted models put them: to every score (baseline
included, so before screening) for a trajectory model, to the change from baseline at every visit for
an MMRM. The analyses pool the sites (no site term): with the arms balanced within sites the effect
estimate stays unbiased, and the site variance is absorbed into the residual covariance. Scores are rounded and clipped to the scale.
Participants then drop out (monotone: after leaving, no further visit), with the design's cumulative
dropout by each visit in each arm, by one of three mechanisms: completely at random (MCAR); at random
(MAR: the probability of leaving before a visit is logistic in the score at the last attended visit, as
in rbmi's simulate_data); not at random (MNAR: logistic in the score of the visit being missed). For
MAR and MNAR the logistic intercept is solved in each simulated trial, arm and visit so that the
expected number leaving equals the design's rate exactly; the slope is `dropout_score_effect` log-odds
per 5 outcome points (worse scores leave more often when positive).

Drift (a scenario's `control_mean`, for planning with a MAP prior on the control arm): the control arm's true
mean change from baseline at the primary week, in the population the design enrols, is set to `control_mean` in
every simulated trial. Each parameter draw's own is computed in closed form (`control_mean_change`: the visit
mean plus the baseline slope times the eligible baseline's mean minus the centre, from the MMRM or, for a
trajectory model, from the MMRM it implies, `implied_mmrm`), and the difference is added to every participant's
score at each post-baseline week w in proportion to min(w, primary week) / primary week: growing linearly from
baseline to the full shift at the primary week, and the same shift after it. Every arm moves with the control
arm, so the active arms' differences from control (the effects) stay as the scenario states them. The shift is
made before scores are rounded and clipped to the scale (which can move the observed mean a little near the
scale's ends); site offsets are left out of the closed form (they cancel in the change from baseline; with entry
screening on a trajectory model they move it slightly). Enriched designs are refused (the population's control
mean would depend on the marker).

The trials are analysed by planning/analysis.py; interim looks are in planning/interim.py.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import special

from .design import PlannedTrial, Scenario, SimulatedTrials
from .params import ParameterSet, PlanningError, implied_mmrm, subset

SCORE_UNIT = 5.0  # dropout_score_effect is per this many outcome points (as data.TrialParameters)


def site_of(trial: PlannedTrial) -> np.ndarray:
    """(N,) site of each participant (ordered by arm, control first): participant j of an arm at site j mod sites."""
    return np.concatenate([np.arange(n) for n in trial.arm_sizes]) % trial.sites


def _site_offsets(params, idx: np.ndarray, trial: PlannedTrial, rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(S, N) each participant's site offset and (S,) the SD it was drawn with; (None, None) with one site
    or a zero SD (then no random numbers are drawn, so one-site tables do not depend on this)."""
    if trial.sites < 2:
        return None, None
    sd = np.full(len(idx), float(trial.site_sd)) if trial.site_sd is not None else np.asarray(params.site_sd, float)[idx]
    if not np.any(sd > 0):
        return None, sd
    u = sd[:, None] * rng.standard_normal((len(idx), trial.sites))
    return u[:, site_of(trial)], sd


def _markers(params: ParameterSet, idx: np.ndarray, n: int, trial: PlannedTrial, rng: np.random.Generator):
    """Standardised baseline log markers (S, N, K) and the eligible fraction per simulated trial."""
    s = len(idx)
    k = len(params.marker_names)
    mu = params.marker_mean[idx]  # (S, K)
    chol = params.marker_chol[idx]  # (S, K, K)
    e = rng.standard_normal((s, n, k))
    if trial.enrich_marker is None or k == 0:
        return mu[:, None, :] + e @ chol.transpose(0, 2, 1), np.ones(s)
    j = params.marker_index(trial.enrich_marker)
    c = params.z_threshold(trial.enrich_marker, float(trial.enrich_threshold))
    # Reorder so the enrichment marker comes first: its Cholesky column then loads on e_0 alone,
    # and drawing e_0 from its truncated normal gives the exact conditional law of the others.
    order = [j] + [i for i in range(k) if i != j]
    cov = np.einsum("sij,skj->sik", chol, chol)[:, order][:, :, order]
    lo = np.linalg.cholesky(cov)
    sd_j = lo[:, 0, 0]
    a = (c - mu[:, j]) / sd_j  # standardised threshold per draw
    upper_tail = special.ndtr(-a)  # P(eligible)
    if upper_tail.mean() < 1e-6:
        raise PlanningError(
            f"enrichment threshold {trial.enrich_threshold:g} for {trial.enrich_marker} leaves fewer than 1 in a million people eligible; lower it"
        )
    u = rng.uniform(size=(s, n))
    e[:, :, 0] = -special.ndtri(u * np.maximum(upper_tail, 1e-300)[:, None])  # e_0 > a, stable in the upper tail
    z_perm = mu[:, order][:, None, :] + e @ lo.transpose(0, 2, 1)
    z = np.empty_like(z_perm)
    z[:, :, order] = z_perm
    return z, upper_tail


def _curve(source: dict, key: str) -> dict[float, float] | None:
    curve = source.get(key)
    return {float(k): float(v) for k, v in curve.items()} if curve else None


def calibrated_dropout(source: dict, weeks: tuple[int, ...], primary: float, given, arms: tuple[str, ...] = ("placebo", "nac")
                       ) -> tuple[tuple[float, ...], tuple[float, ...] | None, str]:
    """Per-arm loss by the primary week (`arms` control first), the shape of the cumulative loss over the
    post-baseline weeks (relative to the primary week's) and a statement of where both come from.

    Default: the fitted trial's observed loss by visit (per arm at the primary week; the shape from all
    arms together), interpolated linearly in weeks. `given` (one rate, or one per arm, control first)
    replaces the rates and keeps the fitted shape; without a fitted trial the hazard is the same at every
    visit."""
    post = [w for w in sorted(weeks) if w > 0]
    k = len(arms)
    pooled = _curve(source, "dropout_by_week")

    def at(curve, w):
        xs = sorted(curve)
        return float(np.interp(w, [0.0, *xs], [0.0, *(curve[x] for x in xs)]))

    shape = None
    if pooled and at(pooled, primary) > 0:
        shape = tuple(round(at(pooled, w) / at(pooled, primary), 6) for w in post)
    if given is not None:
        given = tuple(float(g) for g in np.atleast_1d(given))
        if len(given) not in (1, k):
            raise PlanningError(f"--dropout: give one fraction for every arm or one per arm in the order {', '.join(arms)}; got {len(given)}")
        return given * k if len(given) == 1 else given, shape, "given (--dropout); " + ("visit profile of the fitted trial" if shape else "same hazard at every visit")
    by_arm = source.get("dropout_by_week_arm") or {}
    if len(arms) == 2 and not by_arm and source.get("dropout_by_week_control") and source.get("dropout_by_week_treatment"):
        by_arm = {arms[0]: source["dropout_by_week_control"], arms[1]: source["dropout_by_week_treatment"]}
    curves = [_curve(by_arm, a) for a in arms]
    if all(curves):
        return tuple(round(at(c, primary), 4) for c in curves), shape, "fitted trial: observed loss by visit and arm"
    if pooled:
        rate = round(at(pooled, primary), 4)
        return (rate,) * k, shape, "fitted trial: observed loss by visit"
    return (0.2,) * k, None, "default 0.2, same hazard at every visit"


def _effect_shape(params, trial: PlannedTrial) -> np.ndarray:
    """A fixed primary-week effect spread over the post-baseline visits as the trajectory models' fixed
    scenario does: in proportion to the treatment-phase time code t1 (then constant in follow-up)."""
    t1 = np.array([params.scale.t_codes(w)[0] for w in trial.post_weeks])
    return t1 / t1[trial.primary_index]


def _scenario_effect(params, scenario: Scenario, s: int, rng: np.random.Generator, effect_scale: float) -> np.ndarray | None:
    """Primary-week effects (S, A) of a fixed, vague or design-prior scenario, independent across arms;
    None: the draws' own effects."""
    a = params.n_active
    if scenario.kind == "fixed":
        return np.broadcast_to(scenario.effects(a), (s, a)).copy()
    if scenario.kind == "vague":
        return float(scenario.sd) * rng.standard_normal((s, a))
    if scenario.kind != "assurance":
        raise PlanningError(f"unknown scenario kind '{scenario.kind}'")
    if params.effect_prior is not None:
        mean, sd = (np.array(x, float) for x in zip(*params.effect_prior))
        return (mean + sd * rng.standard_normal((s, a))) * effect_scale
    return None


def _truncated_normal(mean, sd, lower, rng, shape) -> np.ndarray:
    """Normal(mean, sd) draws restricted to >= lower (lower = None: unrestricted), by the inverse CDF."""
    u = rng.uniform(size=shape)
    if lower is None:
        return mean + sd * special.ndtri(u)
    tail = special.ndtr((mean - lower) / sd)  # P(eligible)
    return mean - sd * special.ndtri(u * tail)  # = mean + sd e, e > (lower - mean)/sd


def _check_eligible(fraction: np.ndarray, trial: PlannedTrial) -> None:
    if np.mean(fraction) < 1e-4:
        raise PlanningError(f"the entry criterion (baseline score >= {trial.entry_min:g}) leaves fewer than 1 in 10,000 people eligible; lower --entry-min")


def _by_arm(values: np.ndarray, arm: np.ndarray) -> np.ndarray:
    """(S, N) each participant's entry of per-arm values (S, A): 0 for the control arm."""
    full = np.concatenate([np.zeros((values.shape[0], 1)), values], axis=1)
    return full[:, arm]


def _trajectory_scores(params: ParameterSet, idx, trial: PlannedTrial, scenario: Scenario, rng, effect_scale: float, arm: np.ndarray):
    s, n = len(idx), len(arm)
    weeks = np.asarray(sorted(trial.weeks), float)
    t1, t2 = np.array([params.scale.t_codes(w) for w in weeks]).T
    q = 4 * t1 * (1 - t1)  # curved models' basis
    p_t1 = params.scale.t_codes(trial.primary_week)[0]

    offset, site_sd = _site_offsets(params, idx, trial, rng)
    z, eligible = _markers(params, idx, n, trial, rng)
    tau = params.participant_sd[idx]
    rho = params.participant_corr[idx]
    sigma = params.residual_sd[idx]
    prognostic = params.prognostic[idx]
    m0 = params.intercept[idx][:, None] + np.einsum("snk,sk->sn", z, prognostic)  # baseline mean given the markers (and site)
    if offset is not None:
        m0 = m0 + offset
    sd0 = np.sqrt(tau[:, 0] ** 2 + sigma**2)[:, None]
    lower = trial.entry_min
    if lower is not None:
        q_ok = special.ndtr((m0 - lower) / sd0)  # P(eligible | markers)
        eligible = eligible * q_ok.mean(axis=1)
        _check_eligible(eligible, trial)
        if z.shape[2] and np.any(prognostic != 0):  # eligibility depends on the markers: redraw people until eligible
            keep = rng.uniform(size=(s, n)) < q_ok
            for _ in range(10_000):
                if keep.all():
                    break
                ii, jj = np.nonzero(~keep)
                znew, _ = _markers(params, idx[ii], 1, trial, rng)
                z[ii, jj] = znew[:, 0]
                m0[ii, jj] = params.intercept[idx[ii]] + np.einsum("mk,mk->m", znew[:, 0], prognostic[ii]) + (0.0 if offset is None else offset[ii, jj])
                keep[ii, jj] = rng.uniform(size=len(ii)) < special.ndtr((m0[ii, jj] - lower) / sd0[ii, 0])
    y0 = _truncated_normal(m0, sd0, lower, rng, (s, n))
    # participant effects and the baseline residual given the baseline score
    resid = y0 - m0
    share = (tau[:, 0] ** 2 / sd0[:, 0] ** 2)[:, None]
    e = rng.standard_normal((s, n, 2))
    b0 = share * resid + np.sqrt(share * sigma[:, None] ** 2) * e[:, :, 0]
    e0 = np.where(tau[:, 0:1] > 0, b0 / np.where(tau[:, 0:1] > 0, tau[:, 0:1], 1.0), e[:, :, 0])
    b1 = tau[:, 1:2] * (rho[:, None] * e0 + np.sqrt(1 - rho[:, None] ** 2) * e[:, :, 1])

    fixed = _scenario_effect(params, scenario, s, rng, effect_scale)
    a_n = params.n_active
    if fixed is None:
        d1 = params.nac_change[idx, :, 0] * effect_scale  # (S, A)
        d2 = params.nac_change[idx, :, 1] * effect_scale
        k1 = params.nac_curvature[idx] * effect_scale
        eta = params.nac_moderation[idx] * effect_scale  # (S, A, K)
    else:
        d1, d2, k1 = fixed / p_t1, np.zeros((s, a_n)), np.zeros((s, a_n))
        eta = params.nac_moderation[idx] * (effect_scale if scenario.kind == "assurance" else 0.0)
    modr = np.einsum("snk,sk->sn", z, params.moderation[idx])
    arm_mod = [np.einsum("snk,sk->sn", z, eta[:, a]) for a in range(a_n)]  # (S, N) per active arm: its x marker term
    nac_mod = np.zeros((s, n))
    for a in range(a_n):
        nac_mod = np.where(arm == a + 1, arm_mod[a], nac_mod)
    level = m0 + b0
    slope1 = params.time_change[idx, 0][:, None] + _by_arm(d1, arm) + modr + nac_mod + b1
    slope2 = params.time_change[idx, 1][:, None] + _by_arm(d2, arm)
    bend = params.time_curvature[idx][:, None] + _by_arm(k1, arm)
    eps = rng.standard_normal((s, n, len(weeks) - 1))
    y = np.empty((s, n, len(weeks)))
    y[:, :, 0] = y0
    y[:, :, 1:] = (level[:, :, None] + slope1[:, :, None] * t1[1:] + slope2[:, :, None] * t2[1:] + bend[:, :, None] * q[1:]
                   + sigma[:, None, None] * eps)
    p1, p2 = params.scale.t_codes(trial.primary_week)
    pq = 4 * p1 * (1 - p1)
    true_effect = d1 * p1 + d2 * p2 + k1 * pq + p1 * np.column_stack([arm_mod[a][:, arm == a + 1].mean(axis=1) for a in range(a_n)])
    return y, true_effect, eligible, site_sd


def _mmrm_scores(params, idx, trial: PlannedTrial, scenario: Scenario, rng, effect_scale: float, arm: np.ndarray):
    s, n = len(idx), len(arm)
    offset, site_sd = _site_offsets(params, idx, trial, rng)
    sel = np.array([list(params.visit_weeks).index(w) for w in trial.post_weeks])
    bm, bs = params.baseline_mean[idx][:, None], params.baseline_sd[idx][:, None]
    lower = trial.entry_min
    eligible = np.ones(s) if lower is None else special.ndtr((bm[:, 0] - lower) / bs[:, 0])
    if lower is not None:
        _check_eligible(eligible, trial)
    y0 = _truncated_normal(bm, bs, lower, rng, (s, n))
    fixed = _scenario_effect(params, scenario, s, rng, effect_scale)
    if fixed is None:
        d = params.nac_visit_effect[idx][:, :, sel] * effect_scale  # (S, A, V)
    else:
        d = fixed[:, :, None] * _effect_shape(params, trial)[None, None, :]
    sig = params.sigma()[idx][:, sel][:, :, sel]
    chol = np.linalg.cholesky(sig)
    by_arm = np.concatenate([np.zeros((s, 1, len(sel))), d], axis=1)[:, arm, :]  # (S, N, V): 0 for the control arm
    mean = (params.visit_mean[idx][:, sel][:, None, :] + by_arm
            + params.baseline_slope[idx][:, sel][:, None, :] * (y0 - params.baseline_center[idx][:, None])[:, :, None])
    eps = rng.standard_normal((s, n, len(sel)))
    change = mean + eps @ np.swapaxes(chol, 1, 2)
    if offset is not None:
        change = change + offset[:, :, None]
    y = np.concatenate([y0[:, :, None], y0[:, :, None] + change], axis=2)
    return y, d[:, :, trial.primary_index], eligible, site_sd


def _solve_intercepts(x: np.ndarray, risk: np.ndarray, arm: np.ndarray, hazard: np.ndarray, beta: float) -> np.ndarray:
    """Per trial and arm, the logistic intercept a with mean_{at risk in arm} expit(a + beta x) = hazard[arm].

    x, risk (S, N); arm (N,) arm index; hazard (K,). Newton's method on a monotone function of a, from the
    intercept that is exact when x is constant. Returns (S, N) intercepts placed per participant."""
    s = x.shape[0]
    a = np.zeros((s, len(hazard)))
    for k in range(len(hazard)):
        h = hazard[k]
        rows = arm == k
        xr, rr = x[:, rows], risk[:, rows].astype(float)
        n_r = rr.sum(axis=1)
        if h <= 0 or h >= 1:
            a[:, k] = -np.inf if h <= 0 else np.inf
            continue
        xbar = (xr * rr).sum(axis=1) / np.maximum(n_r, 1)
        ak = np.log(h / (1 - h)) - beta * xbar
        for _ in range(30):
            p = special.expit(ak[:, None] + beta * xr)
            f = (p * rr).sum(axis=1) / np.maximum(n_r, 1) - h
            df = (p * (1 - p) * rr).sum(axis=1) / np.maximum(n_r, 1)
            step = np.clip(f / np.maximum(df, 1e-12), -2.0, 2.0)
            ak = ak - step
            if np.all((np.abs(f) < 1e-10) | (n_r == 0)):
                break
        a[:, k] = ak
    return a[:, arm.astype(int)]


def simulate_dropout(y: np.ndarray, arm: np.ndarray, trial: PlannedTrial, rng: np.random.Generator) -> np.ndarray:
    """Visits attended (S, N) under the design's dropout rates by visit and arm and its mechanism.

    Before post-baseline visit v, a participant still in the trial leaves with probability h_av (MCAR),
    or expit(alpha + beta x / 5) with x the score at the last attended visit (MAR) or at visit v itself
    (MNAR), alpha solved per trial and arm so that the expected fraction leaving is h_av, where
    1 - h_av = (1 - F_av) / (1 - F_a,v-1) and F_av is the design's cumulative dropout by visit v."""
    s, n, w = y.shape
    v = w - 1
    arm = np.asarray(arm).astype(int)
    surv = 1 - trial.cumulative_dropout()  # (K, V)
    hazard = 1 - surv / np.concatenate([np.ones((len(surv), 1)), surv[:, :-1]], axis=1)
    u = rng.uniform(size=(s, n, v))
    beta = trial.dropout_score_effect / SCORE_UNIT
    inside = np.ones((s, n), bool)
    attended = np.zeros((s, n), dtype=np.int64)
    for j in range(v):
        h = hazard[:, j]
        if trial.dropout_mechanism == "mcar" or beta == 0:
            p = h[arm][None, :]
        else:
            x = y[:, :, j] if trial.dropout_mechanism == "mar" else y[:, :, j + 1]  # last attended, or the one being missed
            p = special.expit(_solve_intercepts(x, inside, arm, h, beta) + beta * x)
        inside &= u[:, :, j] >= p
        attended += inside
    return attended


def control_mean_change(params, trial: PlannedTrial, idx: np.ndarray) -> np.ndarray:
    """(S,) the control arm's mean change from baseline at the primary week among the people the design enrols, for
    the parameter draws idx (module docstring: visit mean + baseline slope x (E[baseline | eligible] - centre))."""
    if trial.enrich_marker is not None:
        raise PlanningError("a control mean (drift) scenario cannot be simulated for an enriched design: the enriched population's control "
                            "response depends on the marker; plan the enriched designs without --historical-control")
    idx = np.asarray(idx)
    week = int(trial.primary_week)
    if params.family == "mmrm":
        j = list(params.visit_weeks).index(week)
        visit_mean, slope = params.visit_mean[idx, j], params.baseline_slope[idx, j]
        mean0, sd0, centre = params.baseline_mean[idx], params.baseline_sd[idx], params.baseline_center[idx]
    else:
        draws, back = np.unique(idx, return_inverse=True)
        sub = subset(params, draws)
        m = implied_mmrm(replace(sub, nac_moderation=np.zeros_like(sub.nac_moderation)), (0, week))
        visit_mean, slope = m.visit_mean[back, 0], m.baseline_slope[back, 0]
        mean0, sd0, centre = m.baseline_mean[back], m.baseline_sd[back], m.baseline_center[back]
    eligible_mean = mean0
    if trial.entry_min is not None:  # the mean of Normal(mean0, sd0) above entry_min
        a = (trial.entry_min - mean0) / sd0
        eligible_mean = mean0 + sd0 * np.exp(_log_mills(a))
    return visit_mean + slope * (eligible_mean - centre)


def _log_mills(a: np.ndarray) -> np.ndarray:
    """log(phi(a) / (1 - Phi(a))): the standard normal's inverse Mills ratio above a, on the log scale (stable far in the tail)."""
    return -0.5 * a * a - 0.5 * np.log(2 * np.pi) - special.log_ndtr(-a)


def drift_shape(trial: PlannedTrial) -> np.ndarray:
    """(V,) the share of a control mean shift at each post-baseline week: min(w, primary) / primary."""
    post = np.asarray(trial.post_weeks, float)
    return np.minimum(post, trial.primary_week) / trial.primary_week


def simulate_trials(
    params,
    trial: PlannedTrial,
    scenario: Scenario,
    n_sims: int,
    rng: np.random.Generator,
    effect_scale: float = 1.0,
    round_scores: bool = True,
) -> SimulatedTrials:
    s = int(n_sims)
    if trial.n_active != params.n_active:
        raise PlanningError(f"the design has {trial.n_active} active arm(s); the parameter set's are {list(params.active_arms)}")
    arm = trial.arm_of()
    idx = rng.integers(params.n_draws, size=s)
    make = _mmrm_scores if params.family == "mmrm" else _trajectory_scores
    y, true_effect, eligible, site_sd = make(params, idx, trial, scenario, rng, effect_scale, arm)
    if scenario.control_mean is not None:  # drift: the control arm's (and with it every arm's) mean moved (module docstring)
        shift = float(scenario.control_mean) - control_mean_change(params, trial, idx)
        y[:, :, 1:] += shift[:, None, None] * drift_shape(trial)[None, None, :]
    sc = params.scale
    if round_scores and sc.integer_scores:
        y = np.round(y)
    if round_scores and sc.score_min is not None and sc.score_max is not None:
        y = np.clip(y, sc.score_min, sc.score_max)
    attended = simulate_dropout(y, arm, trial, rng)
    return SimulatedTrials(y=y, attended=attended, arm=arm, primary=trial.primary_index, true_effect=true_effect, eligible=eligible,
                           site=None if site_sd is None else site_of(trial), site_sd=site_sd)
