"""Model declarations: builders returning a BuiltModel around a pm.Model, registered by name.

Nothing here samples: the sampling engine is inference/.
"""

from .pytensor_blas import link_blas

link_blas()  # before any graph is compiled (models/pytensor_blas.py)

from .contract import BuiltModel  # noqa: E402
from .design import ModelDataError, TrialDesign, build_design  # noqa: E402
from .registry import REGISTRY, ModelSpec, get, register  # noqa: E402

__all__ = ["REGISTRY", "BuiltModel", "ModelDataError", "ModelSpec", "TrialDesign", "build_design", "get", "register"]
