"""What a model builder returns: the `pm.Model` and everything the rest of the project needs to know about it.

Every builder in models/ returns a `BuiltModel`. The sampling engine (inference/), the diagnostics and
the command lines read these fields and nothing else; nothing is attached to the `pm.Model` itself.
A new model's author fills this class in and registers a `ModelSpec` (models/registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pymc as pm

from .design import TrialDesign
from .priors import Prior

# Layouts of a model's outcome (BuiltModel.observations): what one row of the observed outcome is.
VISIT_SCORES = "visit_scores"  # the scale's score at each attended visit ('y', dims obs; obs_participant, obs_week)
VISIT_CHANGES = "visit_changes"  # change from baseline at each attended post-baseline visit ('change', dims obs)
MARKER_VALUES = "marker_values"  # end-of-treatment log biomarkers, or an outcome change, one row per participant
OBSERVATION_LAYOUTS = (VISIT_SCORES, VISIT_CHANGES, MARKER_VALUES)


@dataclass(frozen=True)
class BuiltModel:
    """A model built for one trial.

    name          the registry name it was built under
    model         the PyMC model (prior, prior predictive, names, dims and transforms come from it)
    design        the trial arrays it was built from (models/design.py)
    priors        the priors it uses, with their reasons (stored in the saved fit's provenance)
    outcome_vars  its observed outcome variables: the log-likelihood and the posterior predictive
                  are computed for these (auxiliary blocks such as observed biomarkers are left out)
    observations  the layout of the outcome, one of OBSERVATION_LAYOUTS
    fast_variant  a zero-argument builder of an exactly equivalent model that samples faster (the
                  participant effects integrated out, models/marginal.py), or None
    marginal      True for such a variant: the engine recovers the participant effects and the
                  pointwise log-likelihood after sampling (inference/marginal.py)
    fused_kernel  the name of a hand-written log density that computes this model exactly
                  (inference/compile.KERNELS: 'trajectory', 'mmrm'), or None: the graph is compiled
    pointwise     a numpy function of the posterior (an xarray Dataset) returning {outcome var: chain x draw x
                  observation array} of the pointwise log-likelihood, exactly the model's own densities
                  (tested against PyMC's), used instead of compiling the graph's; or None
    notes         what the model did with the data beyond the visit scores (biomarker values
                  imputed, censored, participants left out), reported beside its estimates
    """

    name: str
    model: pm.Model
    design: TrialDesign
    priors: dict[str, Prior]
    outcome_vars: tuple[str, ...]
    observations: str = VISIT_SCORES
    fast_variant: Callable[[], "BuiltModel"] | None = None
    marginal: bool = False
    fused_kernel: str | None = None
    pointwise: Callable | None = None
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.observations not in OBSERVATION_LAYOUTS:
            raise ValueError(f"unknown observation layout '{self.observations}'; choose {', '.join(OBSERVATION_LAYOUTS)}")
        # a marginal variant has no outcome variable of its own: the engine adds its pointwise groups
        missing = [] if self.marginal else [v for v in self.outcome_vars if v not in self.model.named_vars]
        if missing:
            raise ValueError(f"model '{self.name}' declares outcome variables {missing} it does not have")


@dataclass(frozen=True)
class ImpliedCovariance:
    """What a model of the visit scores says about the covariance of one participant's outcome over the visits,
    per posterior draw (ModelSpec.score_covariance answers it from a posterior and the design).

    weeks      the outcome visits (the MMRM: the post-baseline weeks; the trajectory models: every scheduled week)
    outcome    "score" or "change" (change from baseline, given the baseline score)
    cov        chain x draw x visit x visit: the covariance for a participant whose model inputs are all observed
    groups     (participant indices into the design, chain x draw x visit x visit) for participants whose own
               covariance differs (those whose missing baseline biomarkers the model integrates out: theirs adds the
               markers' conditional covariance); every other participant has `cov`
    """

    weeks: np.ndarray
    outcome: str
    cov: np.ndarray
    groups: tuple = ()

    def group_of(self, n_participants: int) -> np.ndarray:
        """Per participant: 0 for `cov`, g + 1 for groups[g]."""
        out = np.zeros(n_participants, dtype=int)
        for g, (rows, _) in enumerate(self.groups):
            out[np.asarray(rows, dtype=int)] = g + 1
        return out

    def covariance(self, group: int) -> np.ndarray:
        """The covariance of group `group` (group_of's numbering)."""
        return self.cov if group == 0 else self.groups[group - 1][1]
