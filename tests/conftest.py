"""Shared fixtures: small synthetic trials written to temporary folders, and their loaded forms."""

from __future__ import annotations

import os
import warnings

import matplotlib

matplotlib.use("Agg")
warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

import pytest  # noqa: E402

from data import TrialParameters, load_dataset, simulate_trial  # noqa: E402


def write_trial(folder, **overrides):
    params = TrialParameters(**overrides)
    trial = simulate_trial(params)
    trial.write(folder)
    return trial


@pytest.fixture(scope="session")
def small_trial_dir(tmp_path_factory):
    """A 60-participant synthetic trial (fast to fit), with biomarkers."""
    folder = tmp_path_factory.mktemp("trials") / "small"
    write_trial(folder, n_participants=60, seed=7)
    return folder


@pytest.fixture(scope="session")
def small_trial(small_trial_dir):
    return load_dataset(small_trial_dir)
