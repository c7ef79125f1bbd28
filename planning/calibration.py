"""Calibrate a design's decision thresholds so that its family-wise type I error stays at or below a target.

For each design, `sims` trials are simulated under the global null (every active arm equal to the
control arm: effect 0 at every visit, the nuisance parameters from the parameter draws, as the table's
`effect=0` scenario) from random numbers of their own, and every analysis a trial could reach is run on
each: the analysis at every look (whether or not the trial or an arm would have stopped before it) and
the final one. Each gives every active arm's posterior probability of benefit; the family rejects (some
arm is declared better than control, wrongly) when any arm's probability passes its threshold at any
analysis, so with one threshold for every arm the rejection depends on the largest probability over
the arms at each analysis (the max statistic): trial i has stage maxima q_i1, ..., q_iL (the looks) and
q_iF (the final analysis), q_ik = max over active arms a of q_iak (q_iaF = 0 where the arm's dual
criterion fails, as that analysis cannot succeed). These do not depend on the thresholds, so the
family-wise type I error is, for any thresholds, a count over the same trials (with one active arm
this is the type I error):

- `final` (the default): the interim efficacy threshold e stays as given and the final threshold c is
  calibrated. A trial rejects when some q_ik > e, or else when q_iF > c. With E the trials stopped for
  efficacy and r = floor(alpha S) - |E|, c is the (r + 1)-th largest q_iF among the others: the smallest
  threshold with at most alpha S rejections. If the looks alone already reject more often than alpha,
  there is no such c and the run is refused (raise --efficacy).
- `common`: one threshold c at every look and at the final analysis (as a Pocock boundary on the
  posterior probability scale): a trial rejects when max(q_i1, ..., q_iL, q_iF) > c, and c is the
  (floor(alpha S) + 1)-th largest of those maxima.

Futility stopping is ignored (non-binding futility, the regulatory convention): an arm that would have
been dropped for futility still counts as rejecting if a later analysis would reject, so the calibrated
design's type I error with futility stopping, in the table's `effect=0` rows (simulated afresh: per arm,
and for the family in the "any" row of a multi-arm design), is at most the calibrated one, up to the
small change that dropping an arm makes to the later analyses of the others (fewer participants of the
dropped arm inform the shared covariance and baseline slopes; the fresh rows measure the whole effect).
Without looks both modes calibrate the final threshold. The calibration's own type I error has Monte
Carlo error sqrt(alpha (1 - alpha) / sims): the fresh `effect=0` row is its check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .analysis import analyse
from .design import AnalysisSettings, InterimSettings, PlannedTrial, SimulatedTrials
from .interim import stage_results
from .params import PlanningError

MODES = ("final", "common")
STREAM = 1 << 20  # the calibration trials' seed stream: SeedSequence(seed, spawn_key=(STREAM, chunk))


@dataclass(frozen=True)
class CalibrationSettings:
    alpha: float = 0.025  # target one-sided type I error
    mode: str = "final"
    sims: int = 5000  # null trials per design

    def validate(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise PlanningError(f"--alpha must be in (0, 0.5), got {self.alpha}")
        if self.mode not in MODES:
            raise PlanningError(f"unknown calibration '{self.mode}'; choose one of {', '.join(MODES)}")
        if self.sims * self.alpha < 10:
            raise PlanningError(
                f"{self.sims} calibration trials leave fewer than 10 expected rejections at alpha {self.alpha:g}; "
                f"use --calibration-sims {math.ceil(10 / self.alpha)} or more"
            )


@dataclass(frozen=True)
class Thresholds:
    """A design's decision thresholds and, when calibrated, the type I error they give on the calibration trials."""

    final: float  # success at the final analysis if P(effect < 0) > final (every active arm)
    efficacy: float | None = None  # stop an arm for efficacy at a look if its P(effect < 0) > efficacy
    type1: float | None = None  # family-wise rejections / sims on the calibration trials (futility non-binding)
    sims: int | None = None

    @property
    def type1_mcse(self) -> float | None:
        return None if self.type1 is None else math.sqrt(self.type1 * (1 - self.type1) / self.sims)


def final_probabilities(final: dict, analysis: AnalysisSettings) -> np.ndarray:
    """(S, A, 1): each active arm's P(benefit) at the final analysis (`analyse`'s results), 0 where the analysis
    failed or, with the dual criterion, where P(effect < -MCID) does not pass."""
    q = np.where(final["ok"], final["p_benefit"], 0.0)
    if analysis.dual:
        q = np.where(final["p_mcid"] > analysis.mcid_prob, q, 0.0)
    return q[:, :, None]


def stage_probabilities(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, interim: InterimSettings | None) -> np.ndarray:
    """(S, A, L + 1): each active arm's P(benefit) at each of the L looks and at the final analysis, 0 where
    an analysis failed (it cannot stop or succeed) and, at the final analysis, where the dual criterion
    fails. The family's stage maxima are its maximum over the arms (axis 1)."""
    if interim is None:
        final, looks = analyse(sim, analysis), []
    else:
        final, looks = stage_results(sim, trial, analysis, interim)
    return np.concatenate([np.stack([np.where(lk["ok"], lk["p_benefit"], 0.0) for lk in looks], axis=2) if looks else
                           np.zeros(final["ok"].shape + (0,)), final_probabilities(final, analysis)], axis=2)


def choose_thresholds(q: np.ndarray, settings: CalibrationSettings, efficacy: float | None) -> Thresholds:
    """The calibrated thresholds (module docstring) from the stage probabilities q of null trials: (S, L + 1),
    the family's maxima over the arms, or (S, A, L + 1) per arm (their maxima are taken here)."""
    if q.ndim == 3:
        q = q.max(axis=1)
    s, stages = q.shape
    allowed = math.floor(settings.alpha * s + 1e-9)
    if settings.mode == "common" and stages > 1:
        top = np.sort(q.max(axis=1))[::-1]
        c = float(top[allowed]) if allowed < s else 0.5
        c = max(c, 0.5)
        return Thresholds(final=c, efficacy=c, type1=float((q.max(axis=1) > c).mean()), sims=s)
    stopped = (q[:, :-1] > efficacy).any(axis=1) if stages > 1 else np.zeros(s, bool)
    room = allowed - int(stopped.sum())
    if room < 0:
        raise PlanningError(
            f"the interim efficacy threshold {efficacy:g} alone rejects in {stopped.mean():.1%} of {s} trials without an effect, above alpha "
            f"{settings.alpha:g}; raise --efficacy or calibrate one threshold for every analysis with --calibrate common"
        )
    rest = np.sort(q[~stopped, -1])[::-1]
    c = max(float(rest[room]) if room < len(rest) else 0.5, 0.5)
    rejected = stopped | (q[:, -1] > c)
    return Thresholds(final=c, efficacy=efficacy, type1=float(rejected.mean()), sims=s)
