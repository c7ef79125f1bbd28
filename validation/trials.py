"""Refitting a compiled trajectory model to another trial of the same size (coverage, agreement)."""

from __future__ import annotations

import numpy as np

from models.design import TrialDesign

from .swap import SwappableModel, observed_data_name


def trial_data(design: TrialDesign, template: TrialDesign, sw: SwappableModel) -> dict[str, np.ndarray]:
    """The arrays of `design` to swap into a model compiled for `template` (same participants and sites count)."""
    if design.n_participants != template.n_participants or len(design.sites) != len(template.sites):
        raise ValueError(
            f"cannot refit: the compiled model has {template.n_participants} participants and {len(template.sites)} sites, "
            f"this trial {design.n_participants} and {len(design.sites)}"
        )
    if not np.array_equal(design.weeks, template.weeks):
        raise ValueError("cannot refit: visit schedules differ")
    arrays = {
        observed_data_name("y"): design.y,
        "obs_participant": design.obs_participant,
        "t1": design.t1,
        "t2": design.t2,
        "obs_week": design.obs_week,
        "arm_indicator": design.arm_indicator(),
        "site_idx": design.site_idx,
    }
    missing = [n for n in sw.data_names if n not in arrays]
    if missing:
        raise ValueError(f"cannot refit: the compiled model also needs {missing}")
    return {k: v for k, v in arrays.items() if k in sw.data_names}


def interval(draws: np.ndarray, prob: float) -> tuple[float, float]:
    """Equal-tailed posterior interval."""
    a = (1 - prob) / 2
    lo, hi = np.quantile(np.asarray(draws).ravel(), [a, 1 - a])
    return float(lo), float(hi)
