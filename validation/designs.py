"""Trial designs for the validation checks, made with the project's own generator and loader."""

from __future__ import annotations

import tempfile
from pathlib import Path

from data import TrialParameters, load_dataset, simulate_trial
from models.design import TrialDesign, build_design

SBC_PARTICIPANTS = 60  # SBC is valid at any trial size; small trials keep each fit to seconds
SBC_DESIGN_SEED = 11


def design_of(params: TrialParameters) -> tuple[TrialDesign, dict]:
    """Simulate a trial, write it through the documented format, load and validate it, build its design."""
    trial = simulate_trial(params)
    with tempfile.TemporaryDirectory() as tmp:
        folder = trial.write(Path(tmp) / "trial")
        design = build_design(load_dataset(folder))
    return design, trial.truth


def sbc_design(n_participants: int = SBC_PARTICIPANTS, seed: int = SBC_DESIGN_SEED) -> TrialDesign:
    """A small design (visits, dropout, biomarker sub-study pattern) with no values below a detection limit.

    Only the pattern matters for SBC: every outcome and marker value is replaced by prior predictive draws.
    No detection limit means no censoring Potential, so the prior predictive is the model's whole generative model.
    """
    design, _ = design_of(TrialParameters(n_participants=n_participants, seed=seed, detection_limits=()))
    if design.baseline is not None and design.baseline.n_censored:
        raise AssertionError("SBC design must have no censored biomarker values")
    return design
