"""Compile a model once, refit it to many datasets by swapping data (the cost that makes SBC affordable).

A nutpie compile costs ~15-20 s (minutes on a busy machine); a small fit costs seconds. So the
observed variables of a built model are re-pointed at shared data containers (`pm.observe` with a
pytensor shared variable named `<observed>__observed`), the model is compiled once with nutpie, and
each replicate calls `compiled.with_data(...)` with its own outcome values (and, where a model
takes them as pm.Data, its own covariates: arm, visit times, site). Shapes may change between
replicates (e.g. a different number of attended visits) as long as every array that depends on
them is swapped together.
"""

from __future__ import annotations

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
            cores: int = 1, target_accept: float = 0.9) -> az.InferenceData:
        unknown = sorted(set(data) - set(self.data_names))
        if unknown:
            raise KeyError(f"cannot swap {unknown}: the compiled model's data are {self.data_names}")
        import nutpie

        compiled = self.compiled.with_data(**data)
        return nutpie.sample(
            compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=int(seed),
            target_accept=target_accept, progress_bar=False, save_warmup=False,
        )


def replicate_seeds(seed: int, n: int) -> list[int]:
    """n independent 32-bit seeds from one seed (numpy SeedSequence)."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]
