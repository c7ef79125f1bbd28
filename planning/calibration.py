"""Calibrate a design's decision thresholds so that its type I error stays at or below a target.

For each design, `sims` trials are simulated under no effect (effect 0 at every visit, the nuisance
parameters from the parameter draws, as the table's `effect=0` scenario) from random numbers of their
own, and every analysis a trial could reach is run on each: the analysis at every look (whether or not
the trial would have stopped before it) and the final one. Each gives the posterior probability of
benefit, so trial i has stage probabilities q_i1, ..., q_iL (the looks) and q_iF (the final analysis;
0 where the dual criterion fails, as that analysis cannot succeed). These do not depend on the
thresholds, so the type I error is, for any thresholds, a count over the same trials:

- `final` (the default): the interim efficacy threshold e stays as given and the final threshold c is
  calibrated. A trial rejects when some q_ik > e, or else when q_iF > c. With E the trials stopped for
  efficacy and r = floor(alpha S) - |E|, c is the (r + 1)-th largest q_iF among the others: the smallest
  threshold with at most alpha S rejections. If the looks alone already reject more often than alpha,
  there is no such c and the run is refused (raise --efficacy).
- `common`: one threshold c at every look and at the final analysis (as a Pocock boundary on the
  posterior probability scale): a trial rejects when max(q_i1, ..., q_iL, q_iF) > c, and c is the
  (floor(alpha S) + 1)-th largest of those maxima.

Futility stopping is ignored (non-binding futility, the regulatory convention): a trial that would have
stopped for futility is still counted as rejecting if a later analysis would reject, so the calibrated
design's type I error with futility stopping, in the table's `effect=0` row (simulated afresh), is at most
the calibrated one. Without looks both modes calibrate the final threshold. The calibration's own type I
error has Monte Carlo error sqrt(alpha (1 - alpha) / sims): the fresh `effect=0` row is its check.
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

    final: float  # success at the final analysis if P(effect < 0) > final
    efficacy: float | None = None  # stop for efficacy at a look if P(effect < 0) > efficacy
    type1: float | None = None  # rejections / sims on the calibration trials (futility non-binding)
    sims: int | None = None

    @property
    def type1_mcse(self) -> float | None:
        return None if self.type1 is None else math.sqrt(self.type1 * (1 - self.type1) / self.sims)


def stage_probabilities(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, interim: InterimSettings | None) -> np.ndarray:
    """(S, L + 1): P(benefit) at each of the L looks and at the final analysis, 0 where an analysis failed
    (it cannot stop or succeed) and, at the final analysis, where the dual criterion fails."""
    if interim is None:
        final, looks = analyse(sim, analysis), []
    else:
        final, looks = stage_results(sim, trial, analysis, interim)
    q_final = np.where(final["ok"], final["p_benefit"], 0.0)
    if analysis.dual:
        q_final = np.where(final["p_mcid"] > analysis.mcid_prob, q_final, 0.0)
    return np.column_stack([np.where(lk["ok"], lk["p_benefit"], 0.0) for lk in looks] + [q_final])


def choose_thresholds(q: np.ndarray, settings: CalibrationSettings, efficacy: float | None) -> Thresholds:
    """The calibrated thresholds (module docstring) from the stage probabilities q (S, L + 1) of null trials."""
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
