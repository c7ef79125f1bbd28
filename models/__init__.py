"""Model declarations: builders returning a BuiltModel around a pm.Model, registered by name.

Nothing here samples: the sampling engine is inference/.
"""

from .contract import BuiltModel
from .design import ModelDataError, TrialDesign, build_design
from .registry import REGISTRY, ModelSpec, get, register

__all__ = ["REGISTRY", "BuiltModel", "ModelDataError", "ModelSpec", "TrialDesign", "build_design", "get", "register"]
