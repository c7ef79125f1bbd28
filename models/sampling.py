"""Sampling a built model into one InferenceData with every group a later step needs.

One seed drives everything: it is split (numpy SeedSequence) into independent streams for
the prior draws, the posterior sampler and the posterior predictive (the fourth stream draws
the participant effects on the fast path), so the same seed gives the same numbers and
changing the number of prior draws does not change the posterior.

Fast path: a model may carry `fast_variant` (a zero-argument builder of an exactly equivalent
model that samples faster, e.g. the headline model with its Gaussian participant effects
integrated out, models/marginal.py). `sample_all` then samples that variant and completes the
fit (participant effects, log-likelihood, predictions) so the InferenceData has the same
variables as the plain path; `SamplerSettings(fast=False)` (`fit.py --plain`) keeps the plain path.

Compiled-model cache: nutpie's compile is mostly numba JIT of the log-density wrapper, which
nutpie cannot cache on disk. `compile_nutpie` rebuilds that wrapper without closures and keys
numba's on-disk cache by PyTensor's hash of the log-density graph plus the shapes of the data
it reads, so a second fit of the same model in a new process loads machine code instead of
recompiling. The cache lives in $DEPTRIAL_CACHE (default ~/.cache/deptrial); DEPTRIAL_CACHE=off
disables it.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import numpy as np
import pymc as pm

from .fused import ndtri, source_key

SAMPLERS = ("nutpie", "pymc")


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str = "nutpie"
    draws: int = 1500
    tune: int = 1000
    chains: int = 4
    cores: int = 2
    target_accept: float = 0.9
    prior_draws: int = 500
    seed: int = 1
    fast: bool = True  # sample a model's exact fast variant when it has one (models/marginal.py)
    fused: bool = True  # on the fast path, nutpie calls the hand-fused log density (models/fused.py)

    def as_attrs(self) -> dict:
        return {f"sampler_{k}": v for k, v in self.__dict__.items()}


def seed_streams(seed: int, n: int = 4) -> list[int]:
    """Independent 32-bit seeds for prior, posterior, predictive and spare streams."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- compiled-model cache

_LOGP_SRC = """
def deptrial_logp(dim, x_, out_, logp_, user_data_):
    if dim != N_DIM:
        return -1
    try:
        x = numba.carray(x_, (N_DIM,))
        out = numba.carray(out_, (N_DIM,))
        logp = numba.carray(logp_, ())
        logp_val, grad = extract(x, user_data_)
        logp[()] = logp_val
        out[...] = grad
        if not np.all(np.isfinite(out)):
            return 3
        if not np.isfinite(logp_val):
            return 4
    except Exception:
        return 1
    return 0
"""

_EXPAND_SRC = """
def deptrial_expand(dim, expanded, x_, out_, user_data_):
    if dim != N_DIM:
        return -1
    if expanded != N_EXPANDED:
        return -1
    try:
        x = numba.carray(x_, (N_DIM,))
        out = numba.carray(out_, (N_EXPANDED,))
        (values,) = extract(x, user_data_)
        out[...] = values
    except Exception:
        return -2
    return 0
"""

_CACHE_KEYS = None  # WeakKeyDictionary: wrapper function -> cache key (filled lazily)
_CACHE_FOLDER: Path | None = None  # where the wrappers compiled now go (set by compile_nutpie)


def cache_dir() -> Path | None:
    """Folder of the on-disk compiled-model cache, or None when DEPTRIAL_CACHE=off."""
    value = os.environ.get("DEPTRIAL_CACHE", "")
    if value.lower() in ("off", "0", "none", "false"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "deptrial"


def erfcinv_native(y: float) -> float:
    """erfcinv in plain arithmetic (numba-compilable, so cacheable): -ndtri(y / 2) / sqrt(2).

    ndtri is models/fused.ndtri (Acklam's rational approximation and one Halley step: double
    precision). scipy's erfcinv (what PyTensor calls) is a Cython function pointer that numba
    cannot cache.
    """
    if not y == y:
        return y
    if y <= 0.0:
        return math.inf
    if y >= 2.0:
        return -math.inf
    return -ndtri(0.5 * y) / math.sqrt(2.0)


def _use_native_erfcinv(on: bool) -> None:
    """PyTensor's numba backend computes Erfcinv by calling scipy's Cython function through a
    process-local pointer, which numba cannot cache. While compiling with the cache (on=True) it is
    computed by erfcinv_native instead; afterwards PyTensor's own implementation is restored, so
    nothing else in the process changes."""
    from pytensor.link.numba.dispatch.basic import numba_njit, register_funcify_and_cache_key
    from pytensor.link.numba.dispatch.scalar import numba_funcify_ScalarOp
    from pytensor.scalar.math import Erfcinv

    if not on:
        register_funcify_and_cache_key(Erfcinv)(numba_funcify_ScalarOp)
        return
    jitted = numba_njit(erfcinv_native, fastmath=False)

    def funcify(op, node=None, **kwargs):
        if any(inp.type.dtype != "float64" for inp in node.inputs):  # other dtypes: PyTensor's own path
            return numba_funcify_ScalarOp(op, node, **kwargs)
        return jitted, "deptrial-erfcinv-native-" + source_key()

    register_funcify_and_cache_key(Erfcinv)(funcify)


def _install_locator(folder: Path) -> None:
    """Register a numba cache locator that sends our wrappers to `folder`, keyed by graph hash."""
    global _CACHE_KEYS, _CACHE_FOLDER
    _CACHE_FOLDER = folder
    if _CACHE_KEYS is not None:
        return
    from weakref import WeakKeyDictionary

    from numba.core.caching import CacheImpl, _CacheLocator

    keys: WeakKeyDictionary = WeakKeyDictionary()

    class DeptrialCacheLocator(_CacheLocator):
        def __init__(self, py_func, py_file, key):
            self._py_func, self._py_file, self._key = py_func, py_file, key

        def ensure_cache_path(self):
            _CACHE_FOLDER.mkdir(parents=True, exist_ok=True)

        def get_cache_path(self):
            return str(_CACHE_FOLDER)

        def get_source_stamp(self):
            return 0

        def get_disambiguator(self):
            return self._key

        @classmethod
        def from_function(cls, py_func, py_file):
            key = keys.get(py_func)
            return None if key is None else cls(py_func, py_file, key)

    CacheImpl._locator_classes.insert(0, DeptrialCacheLocator)
    _CACHE_KEYS = keys


def register_cached(func, folder: Path, key: str) -> None:
    """Send numba's on-disk cache of `func` (compiled with cache=True) to `folder`, under `key`."""
    _install_locator(Path(folder))
    _CACHE_KEYS[func] = key


def _wrapper_key(tag: str, inner, n_dim: int, n_expanded: int, shared_names, shared_data) -> str | None:
    """Hash of PyTensor's graph key of the inner function, sizes and the shapes/dtypes of shared data."""
    import numba
    import nutpie
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS

    graph_key = CACHED_SRC_FUNCTIONS.get(getattr(inner, "py_func", None))
    if graph_key is None:
        return None
    parts = [tag, "v3", graph_key, str(n_dim), str(n_expanded), nutpie.__version__, numba.__version__]
    parts += [f"{name}:{shared_data[name].shape}:{shared_data[name].dtype}" for name in shared_names]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]


def _closure_free(src: str, name: str, original, **env):
    """Recompile nutpie's wrapper from source with its closure as globals (numba can then cache it)."""
    import inspect

    import numba

    closure = inspect.getclosurevars(original).nonlocals
    # __name__: numba rebuilds a cached function's environment by importing its module
    glb = {"__name__": __name__, "numba": numba, "np": np, "extract": closure["extract"], **env}
    loc: dict = {}
    exec(compile(src, f"<deptrial {name}>", "exec"), glb, loc)
    return loc[name]


@contextmanager
def _cacheable_wrappers(folder: Path):
    """Within the block, nutpie builds closure-free, disk-cacheable logp/expand wrappers."""
    import nutpie.compile_pymc as cp

    _install_locator(folder)
    orig_logp, orig_expand = cp._make_c_logp_func, cp._make_c_expand_func

    def make_logp(n_dim, logp_fn, user_data, shared_logp, shared_data):
        func, sig = orig_logp(n_dim, logp_fn, user_data, shared_logp, shared_data)
        key = _wrapper_key("logp", logp_fn, n_dim, 0, shared_logp, shared_data)
        if key is None:
            return func, sig
        new = _closure_free(_LOGP_SRC, "deptrial_logp", func, N_DIM=inspect_nonlocal(func, "n_dim"))
        _CACHE_KEYS[new] = key
        return new, sig

    def make_expand(n_dim, n_expanded, expand_fn, user_data, shared_vars, shared_data):
        func, sig = orig_expand(n_dim, n_expanded, expand_fn, user_data, shared_vars, shared_data)
        key = _wrapper_key("expand", expand_fn, n_dim, n_expanded, shared_vars, shared_data)
        if key is None:
            return func, sig
        new = _closure_free(
            _EXPAND_SRC, "deptrial_expand", func, N_DIM=inspect_nonlocal(func, "n_dim"), N_EXPANDED=inspect_nonlocal(func, "n_expanded")
        )
        _CACHE_KEYS[new] = key
        return new, sig

    import numba

    orig_cfunc = numba.cfunc

    def cfunc(sig, **kwargs):  # cache exactly the wrappers we could key
        def decorate(func):
            return orig_cfunc(sig, **kwargs, cache=func in _CACHE_KEYS)(func)

        return decorate

    from numba.core.base import BaseContext

    orig_constant = BaseContext.make_constant_array

    def make_constant_array(self, builder, typ, ary):
        # numba embeds small contiguous constant arrays in the machine code, but refers to
        # non-contiguous ones (e.g. a column view) by their address in this process, which
        # makes the whole function uncacheable: embed a contiguous copy instead.
        if typ.layout not in "FC" and ary.nbytes <= 10**6:
            had = "allow_dynamic_globals" in self.__dict__
            saved = self.__dict__.get("allow_dynamic_globals")
            self.allow_dynamic_globals = False
            try:
                return orig_constant(self, builder, typ, np.ascontiguousarray(ary))
            finally:
                if had:
                    self.allow_dynamic_globals = saved
                else:
                    del self.allow_dynamic_globals
        return orig_constant(self, builder, typ, ary)

    cp._make_c_logp_func, cp._make_c_expand_func, numba.cfunc = make_logp, make_expand, cfunc
    BaseContext.make_constant_array = make_constant_array
    _use_native_erfcinv(True)
    try:
        yield
    finally:
        cp._make_c_logp_func, cp._make_c_expand_func, numba.cfunc = orig_logp, orig_expand, orig_cfunc
        BaseContext.make_constant_array = orig_constant
        _use_native_erfcinv(False)


def inspect_nonlocal(func, name: str):
    import inspect

    return inspect.getclosurevars(func).nonlocals[name]


def _cache_entries(folder: Path | None) -> set[str]:
    return {p.name for p in folder.glob("*.nbi")} if folder is not None and folder.is_dir() else set()


def compile_nutpie(model: pm.Model, fused: bool = True):
    """nutpie.compile_pymc_model with the on-disk cache of the numba wrappers; returns (compiled, was_cached).

    A model carrying `fused_layout` (the marginal headline, treatment and null models, models/fused.py)
    is given its hand-fused log density instead of the compiled graph, unless fused=False.
    was_cached is True when the compile added no new cache entry (it loaded machine code instead).
    """
    import nutpie

    folder = cache_dir()
    make_layout = getattr(model, "fused_layout", None) if fused else None
    layout = make_layout() if make_layout is not None else None  # None: priors the fused function lacks
    if layout is not None:
        from .fused import compile_fused

        before = _cache_entries(folder)
        compiled = compile_fused(model, layout, folder)
        return compiled, bool(before) and _cache_entries(folder) <= before
    if folder is None:
        return nutpie.compile_pymc_model(model, backend="numba"), False
    before = _cache_entries(folder)
    try:
        with _cacheable_wrappers(folder), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Cannot cache compiled function")
            compiled = nutpie.compile_pymc_model(model, backend="numba")
    except Exception as exc:  # noqa: BLE001 - a damaged or incompatible cache must never stop a fit
        warnings.warn(f"compiled-model cache in {folder} unusable ({type(exc).__name__}: {exc}); compiling without it", RuntimeWarning, stacklevel=2)
        return nutpie.compile_pymc_model(model, backend="numba"), False
    return compiled, bool(before) and _cache_entries(folder) <= before


def sample_posterior(model: pm.Model, settings: SamplerSettings, quiet: bool = False) -> tuple[az.InferenceData, dict]:
    """Posterior draws with the chosen sampler; returns (idata, timings in seconds)."""
    _, post_seed, _, _ = seed_streams(settings.seed)
    timings = {}
    if settings.sampler == "nutpie":
        import nutpie

        t0 = time.perf_counter()
        compiled, cached = compile_nutpie(model, fused=settings.fused)
        timings["compile_s"] = time.perf_counter() - t0
        timings["compile_cached"] = float(cached)
        _log(f"  compiled in {timings['compile_s']:.1f} s; sampling {settings.chains} chains x {settings.draws} draws", quiet)
        t0 = time.perf_counter()
        idata = nutpie.sample(
            compiled,
            draws=settings.draws,
            tune=settings.tune,
            chains=settings.chains,
            cores=settings.cores,
            seed=post_seed,
            target_accept=settings.target_accept,
            progress_bar=not quiet and sys.stderr.isatty(),
            save_warmup=False,
        )
        timings["sample_s"] = time.perf_counter() - t0
    elif settings.sampler == "pymc":
        t0 = time.perf_counter()
        with model:
            idata = pm.sample(
                draws=settings.draws,
                tune=settings.tune,
                chains=settings.chains,
                cores=settings.cores,
                random_seed=post_seed,
                target_accept=settings.target_accept,
                progressbar=not quiet and sys.stderr.isatty(),
                compute_convergence_checks=False,
            )
        timings["sample_s"] = time.perf_counter() - t0
    else:
        raise ValueError(f"unknown sampler '{settings.sampler}'; choose from {SAMPLERS}")
    # Posterior-only keeps ordering identical across samplers; groups are added below.
    for group in ("observed_data", "constant_data", "warmup_posterior", "warmup_sample_stats"):
        if group in idata.groups():
            del idata[group]
    return idata, timings


def outcome_vars(model: pm.Model) -> list[str]:
    """The observed outcome variables (log-likelihood and predictions); auxiliary blocks excluded.

    A model may declare `model.outcome_vars`; otherwise 'y' when present, else every observed RV.
    """
    declared = getattr(model, "outcome_vars", None)
    if declared:
        return list(declared)
    names = [v.name for v in model.observed_RVs]
    return ["y"] if "y" in names else names


def sample_all(model: pm.Model, settings: SamplerSettings, quiet: bool = False) -> tuple[az.InferenceData, dict]:
    """Prior, prior predictive, posterior, posterior predictive, log-likelihood, observed and constant data.

    Samples the model's exact fast variant when it has one and settings.fast (see the module doc);
    the prior, prior predictive, observed and constant data always come from `model` itself.
    """
    prior_seed, _, pred_seed, spare_seed = seed_streams(settings.seed)
    t_start = time.perf_counter()
    _log("  sampling prior predictive", quiet)
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        prior = pm.sample_prior_predictive(draws=settings.prior_draws, random_seed=prior_seed)
    variant = getattr(model, "fast_variant", None) if settings.fast else None
    if variant is not None:
        from .marginal import finish_marginal_fit

        fast_model = variant()
        _log("  fast path: participant effects integrated out analytically, recovered after sampling", quiet)
        idata, timings = sample_posterior(fast_model, settings, quiet)
        timings.update(finish_marginal_fit(idata, fast_model.marginal_design, spare_seed, pred_seed))
    else:
        idata, timings = sample_posterior(model, settings, quiet)
        t0 = time.perf_counter()
        with model:
            pm.compute_log_likelihood(idata, var_names=outcome_vars(model), extend_inferencedata=True, progressbar=False)
            timings["log_likelihood_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            pm.sample_posterior_predictive(
                idata, var_names=outcome_vars(model), random_seed=pred_seed, extend_inferencedata=True, progressbar=False
            )
            timings["posterior_predictive_s"] = time.perf_counter() - t0
        idata.posterior.attrs["fit_path"] = "plain"
    for group in ("prior", "prior_predictive"):
        if group in prior.groups():
            idata.add_groups({group: prior[group]})
    # observed/constant data from the model itself, identical whichever sampler ran
    _add_data_groups(idata, model)
    timings["total_s"] = time.perf_counter() - t_start
    return idata, timings


def _add_data_groups(idata: az.InferenceData, model: pm.Model) -> None:
    import xarray as xr

    coords = {k: np.asarray(v) for k, v in model.coords.items() if v is not None}

    def dataset(variables):
        out = {}
        for var in variables:
            value = model.rvs_to_values[var] if var in model.rvs_to_values else var
            arr = np.asarray(value.eval() if hasattr(value, "eval") else value)
            dims = model.named_vars_to_dims.get(var.name, [f"{var.name}_dim_{i}" for i in range(arr.ndim)])
            out[var.name] = xr.DataArray(arr, dims=dims, coords={d: coords[d] for d in dims if d in coords})
        return xr.Dataset(out)

    for group in ("observed_data", "constant_data"):
        if group in idata.groups():
            del idata[group]
    idata.add_groups({"observed_data": dataset(model.observed_RVs)})
    idata.add_groups({"constant_data": dataset(model.data_vars)})
