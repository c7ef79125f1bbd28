"""Trial data: the validated schema (load_dataset) and the calibrated synthetic trial generator."""

from pathlib import Path

from .errors import DatasetError, Problem
from .meta import DatasetMeta, parse_meta, read_meta
from .schema import changes_of, load_dataset, meta_of
from .synthetic import SyntheticTrial, TrialParameters, dose_trial_parameters, simulate_trial

DEFAULT_DATASET = Path(__file__).resolve().parent / "default"  # the two-arm NAC trial
DOSE_DATASET = Path(__file__).resolve().parent / "dose"  # the three-arm dose trial (placebo, low, high)

__all__ = [
    "DEFAULT_DATASET",
    "DOSE_DATASET",
    "DatasetError",
    "DatasetMeta",
    "Problem",
    "SyntheticTrial",
    "TrialParameters",
    "changes_of",
    "dose_trial_parameters",
    "load_dataset",
    "meta_of",
    "parse_meta",
    "read_meta",
    "simulate_trial",
]
