"""Trial data: the validated schema (load_dataset) and the calibrated synthetic trial generator."""

from pathlib import Path

from .errors import DatasetError, Problem
from .meta import DatasetMeta, parse_meta, read_meta
from .schema import changes_of, load_dataset, meta_of
from .synthetic import SyntheticTrial, TrialParameters, simulate_trial

DEFAULT_DATASET = Path(__file__).resolve().parent / "default"

__all__ = [
    "DEFAULT_DATASET",
    "DatasetError",
    "DatasetMeta",
    "Problem",
    "SyntheticTrial",
    "TrialParameters",
    "changes_of",
    "load_dataset",
    "meta_of",
    "parse_meta",
    "read_meta",
    "simulate_trial",
]
