"""Compile a model once, refit it to many datasets by swapping data (the cost that makes SBC affordable).

Two ways, one per compiled path:
- `FusedRefit`, the path `fit.py` runs: the model's fast variant with its fused log density
  (inference/compile.py, inference/kernels*.py). The fused functions read every datum, size and prior
  parameter from one float64 context array and are compiled once per machine, so a refit to another
  trial of the same structure only builds that trial's context array (milliseconds) and hands it to
  the compiled model: no compile, no model build. The context comes from the kernel's own
  `fused_layout`, given the template's model (names, shapes, coordinates) and the new trial's design.
- `SwappableModel`, the compiled PyTensor graph (any model):

A nutpie compile costs ~15-20 s (minutes on a busy machine); a small fit costs seconds. So the
observed variables of a built model are re-pointed at shared data containers (`pm.observe` with a
pytensor shared variable named `<observed>__observed`), the model is compiled once with nutpie, and
each replicate calls `compiled.with_data(...)` with its own outcome values (and, where a model
takes them as pm.Data, its own covariates: arm, visit times, site). Shapes may change between
replicates (e.g. a different number of attended visits) as long as every array that depends on
them is swapped together.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pymc as pm
import pytensor

OBSERVED_SUFFIX = "__observed"


def observed_data_name(var_name: str) -> str:
    return f"{var_name}{OBSERVED_SUFFIX}"


def with_shared_observations(model: pm.Model) -> pm.Model:
    """A copy of `model` whose observed values are shared variables `<name>__observed` (same values)."""
    shared = {}
    for var in model.observed_RVs:
        value = model.rvs_to_values[var]
        arr = np.asarray(value.data if hasattr(value, "data") else value.eval())
        shared[var] = pytensor.shared(arr.copy(), name=observed_data_name(var.name))
    return pm.observe(model, shared)


@dataclass
class SwappableModel:
    """A model compiled once by nutpie; `fit(data)` samples it on replacement data."""

    model: pm.Model
    compiled: object
    compile_s: float
    data_names: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, model: pm.Model) -> "SwappableModel":
        import nutpie

        shared_model = with_shared_observations(model)
        t0 = time.perf_counter()
        compiled = nutpie.compile_pymc_model(shared_model, backend="numba")
        return cls(shared_model, compiled, time.perf_counter() - t0, sorted(compiled.shared_data))

    def fit(self, data: dict[str, np.ndarray], *, seed: int, draws: int = 300, tune: int = 300, chains: int = 2,
            cores: int = 1, target_accept: float = 0.9, mass_matrix: str = "low_rank") -> az.InferenceData:
        unknown = sorted(set(data) - set(self.data_names))
        if unknown:
            raise KeyError(f"cannot swap {unknown}: the compiled model's data are {self.data_names}")
        import nutpie

        from inference.sampling import nutpie_adaptation

        compiled = self.compiled.with_data(**data)
        return nutpie.sample(
            compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=int(seed),
            target_accept=target_accept, progress_bar=False, save_warmup=False, **nutpie_adaptation(mass_matrix),
        )


@dataclass
class FusedRefit:
    """A model's fused log density compiled once; `fit(design)` samples it on another trial's data.

    `built` is the model the fits are of (its fast variant when it has one: the marginal trajectory models,
    participant effects integrated out), built from a template design. A trial whose structure differs from the
    template's (other sites, arms, covariates, number of participants or of latent biomarker values) is refused
    by the kernel's own checks (inference.kernels.Unsupported) and compiled on its own (`fit` does so).
    """

    name: str  # the registry name
    priors: dict | None  # the prior overrides it was built with (models/priors.py format)
    built: object  # the models.contract.BuiltModel sampled (the fast variant), built from the template design
    compiled: object
    shape_info: tuple
    compile_s: float

    @classmethod
    def build(cls, name: str, design, priors: dict | None = None) -> "FusedRefit":
        """Model `name` of the registry built from `design` (the template) with `priors`; raises ValueError when no
        fused log density computes it (or inference.compile's guard found it disagreeing with the graph)."""
        from inference.compile import compile_nutpie, fused_layout, uses_fused
        from models import registry

        plain = registry.get(name).build(design, priors=priors)
        fast = plain.fast_variant() if plain.fast_variant is not None else plain
        if fast.fused_kernel is None:
            raise ValueError(f"model '{name}' has no fused log density; refit it with SwappableModel")
        t0 = time.perf_counter()
        compiled, _ = compile_nutpie(fast)
        if not uses_fused(compiled):
            raise ValueError(f"model '{name}' is not computed by its fused log density here (see the warning above)")
        layout = fused_layout(fast)
        return cls(name, priors, fast, compiled, layout.shape_info, time.perf_counter() - t0)

    @property
    def kernel_version(self) -> str:
        """The fused kernel's name and source hash (which code the fits ran)."""
        from inference.compile import KERNELS

        return f"{self.built.fused_kernel} {KERNELS[self.built.fused_kernel].source_key()}"

    @property
    def _shapes(self) -> dict:
        names, _, shapes = self.shape_info
        return dict(zip(names, shapes))

    def layout(self, design):
        """The fused layout of this model's structure with `design`'s data (inference.kernels*.fused_layout)."""
        from inference.compile import KERNELS

        return KERNELS[self.built.fused_kernel].fused_layout(self.built.model, design, self.built.priors, self._shapes)

    def compiled_for(self, design):
        """The compiled model reading `design`'s context array (a copy: the template's stays as it is)."""
        from inference.kernels import Unsupported

        try:
            layout = self.layout(design)
        except Unsupported:
            layout = None
        same = layout is not None and [list(x) for x in layout.shape_info[::2]] == [list(x) for x in self.shape_info[::2]]
        if not same:  # another structure: its own compile (the fused functions themselves are compiled once per process)
            return self._compile_alone(design)
        return dataclasses.replace(self.compiled, user_data=layout.ctx)

    def _compile_alone(self, design):
        return FusedRefit.build(self.name, design, self.priors).compiled

    def fit(self, design, *, seed: int, draws: int = 300, tune: int = 300, chains: int = 2, cores: int = 1,
            target_accept: float = 0.9, mass_matrix: str = "low_rank") -> az.InferenceData:
        import nutpie

        from inference.sampling import nutpie_adaptation

        return nutpie.sample(
            self.compiled_for(design), draws=draws, tune=tune, chains=chains, cores=cores, seed=int(seed),
            target_accept=target_accept, progress_bar=False, save_warmup=False, **nutpie_adaptation(mass_matrix),
        )


_REFITS: dict = {}
_REFITS_LOCK = threading.Lock()


def cached_refit(key, make):
    """make() once per process for `key` (each Dask worker compiles, or loads from the disk cache, once)."""
    with _REFITS_LOCK:
        if key not in _REFITS:
            _REFITS[key] = make()
        return _REFITS[key]


def replicate_seeds(seed: int, n: int) -> list[int]:
    """n independent 32-bit seeds from one seed (numpy SeedSequence)."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]
