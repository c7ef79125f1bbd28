"""Models of the trial: builders returning pm.Model, registered by name."""

from .design import ModelDataError, TrialDesign, build_design
from .registry import REGISTRY, ModelSpec, get, register

__all__ = ["REGISTRY", "ModelDataError", "ModelSpec", "TrialDesign", "build_design", "get", "register"]
