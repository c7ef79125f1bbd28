"""Compiling a model for nutpie: the compiled-model cache, the fused log density, and every use of
another library's internals, in this one module.

Compiled-model cache: nutpie's compile is mostly numba JIT of the log-density wrapper, which
nutpie cannot cache on disk. `compile_nutpie` rebuilds that wrapper without closures and keys
numba's on-disk cache by PyTensor's hash of the log-density graph plus the shapes of the data
it reads, so a second fit of the same model in a new process loads machine code instead of
recompiling. The cache lives in $DEPTRIAL_CACHE (default ~/.cache/deptrial); DEPTRIAL_CACHE=off
disables it.

Fused log density: a marginal trajectory model is given the hand-written log density and gradient
of inference/kernels.py as two C callbacks, compiled once per machine and cached the same way.

Internals used (each checked against TESTED_VERSIONS before use):
- numba: a cache locator class (numba.core.caching), BaseContext.make_constant_array, numba.cfunc;
- nutpie: compile_pymc's _make_c_logp_func/_make_c_expand_func, _compute_shapes,
  CompiledPyMCModel, _prepare_dims_and_coords, _rv_dict_to_flat_array_wrapper, _wrap_with_lock;
- PyTensor: the numba dispatch of Erfcinv and the cache of compiled source functions.
Every patch is undone when its block ends, so nothing else in the process changes.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numba
import numpy as np

from models.contract import BuiltModel

from . import kernels, kernels_mmrm

# the hand-written log densities, by the name a model declares (BuiltModel.fused_kernel)
KERNELS = {kernels.KERNEL: kernels, kernels_mmrm.KERNEL: kernels_mmrm}

# the versions whose internals this module was written against: (lowest, first excluded) per package
TESTED_VERSIONS = {"nutpie": ((0, 16), (0, 17)), "numba": ((0, 61), (0, 66)), "pytensor": ((2, 31), (2, 39))}


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@lru_cache(maxsize=1)
def internals_supported() -> bool:
    """Whether the installed nutpie, numba and PyTensor are versions whose internals this module knows."""
    outside = []
    for package, (low, high) in TESTED_VERSIONS.items():
        try:
            found = _version_tuple(metadata.version(package))
        except metadata.PackageNotFoundError:
            outside.append(f"{package} not installed")
            continue
        if not low <= found[: len(low)] < high:
            outside.append(f"{package} {metadata.version(package)}")
    if outside:
        warnings.warn(
            f"{', '.join(outside)}: outside the versions the compiled-model cache and the fused log density were "
            "written for; compiling with nutpie's own path (slower, same results)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


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

    ndtri is inference/kernels.ndtri (Acklam's rational approximation and one Halley step: double
    precision). scipy's erfcinv (what PyTensor calls) is a Cython function pointer that numba
    cannot cache.
    """
    if not y == y:
        return y
    if y <= 0.0:
        return math.inf
    if y >= 2.0:
        return -math.inf
    return -kernels.ndtri(0.5 * y) / math.sqrt(2.0)


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
        return jitted, "deptrial-erfcinv-native-" + kernels.source_key()

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
    import nutpie
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS

    graph_key = CACHED_SRC_FUNCTIONS.get(getattr(inner, "py_func", None))
    if graph_key is None:
        return None
    parts = [tag, "v4", graph_key, str(n_dim), str(n_expanded), nutpie.__version__, numba.__version__]
    parts += [f"{name}:{shared_data[name].shape}:{shared_data[name].dtype}" for name in shared_names]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]


def _closure_free(src: str, name: str, original, **env):
    """Recompile nutpie's wrapper from source with its closure as globals (numba can then cache it)."""
    import inspect

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


def fused_layout(built: BuiltModel) -> kernels.FusedLayout | None:
    """The fused log density's layout for `built`, or None where none applies (the graph is compiled)."""
    module = KERNELS.get(built.fused_kernel or "")
    if module is None:
        return None
    import pytensor
    from nutpie.compile_pymc import _compute_shapes
    from pytensor.compile.mode import Mode

    # the shapes come from two small functions evaluated once: PyTensor's Python implementations, no C compile
    with pytensor.config.change_flags(mode=Mode(linker="py", optimizer="fast_compile")):
        shapes = _compute_shapes(built.model)
    try:
        return module.fused_layout(built.model, built.design, built.priors, shapes)
    except kernels.Unsupported:
        return None


def _verified(built: BuiltModel, layout: kernels.FusedLayout, folder: Path | None, check: bool) -> bool:
    """Whether this exact model was already found to agree with its fused function (check=False), or record that it does.

    The key covers everything either side depends on: the model declarations' source (models/),
    the fused kernel's source, the PyMC and PyTensor versions, the context array (data, sizes and
    priors) and the variable layout. Any change to a model's code re-runs the comparison.
    """
    if folder is None:
        return False
    import pymc
    import pytensor

    models_dir = Path(__file__).resolve().parent.parent / "models"
    digest = hashlib.sha256()
    for path in sorted(models_dir.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(f"{KERNELS[layout.kernel].source_key()}|{pymc.__version__}|{pytensor.__version__}|{layout.shape_info[0]}".encode())
    digest.update(layout.ctx.tobytes())
    mark = folder / f"fused-verified-{digest.hexdigest()[:40]}"
    if not check:
        return mark.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        mark.touch()
    except OSError:
        pass  # an unwritable cache only means the comparison runs again next time
    return True


def fused_disagreement(built: BuiltModel, layout: kernels.FusedLayout, logp_c) -> str | None:
    """Compare the fused log density and gradient with the PyTensor graph's at one fixed point.

    Returns None when they agree, else what differs. The point is a fixed pseudo-random one of the
    unconstrained space (no term vanishes there, as some would at zero); the graph is built and
    evaluated unrewritten with PyTensor's Python implementations, no C compile: under a second. The
    gradient is compared along two fixed random directions with the graph's own derivative there,
    from its log density at four points on each (central differences with h = 1e-3 and 5e-4,
    Richardson-extrapolated: within 1e-12 of PyTensor's symbolic gradient relative to the terms of
    the directional derivative on the bundled trial's models), which costs a few evaluations where
    building the symbolic gradient costs seconds (four for the MMRM). The tolerances allow the
    constant that PyMC's float32 prior-scale constants add (below 1e-5) and float rounding; a change
    to the model's mean, likelihood or priors that the fused function does not follow moves the
    density and gradient far beyond them.
    """
    import ctypes

    import pytensor
    from pytensor.compile.mode import Mode

    model = built.model
    values = [model.rvs_to_values[rv] for rv in model.free_RVs]
    names, slices, shapes = layout.shape_info
    rng = np.random.default_rng(20261128)
    x = rng.normal(size=layout.n_dim) * 0.3
    logp = model.logp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = pytensor.function(values, logp, mode=Mode(linker="py", optimizer=None))

        def graph_at(point):
            return float(graph(*(point[sl].reshape(shape).astype(v.dtype) for v, sl, shape in zip(values, slices, shapes))))

        ref_lp = graph_at(x)
    grad, lp = np.zeros(layout.n_dim), np.zeros(1)
    as_ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))  # noqa: E731
    code = logp_c.ctypes(layout.n_dim, as_ptr(x), as_ptr(grad), as_ptr(lp), layout.ctx.ctypes.data_as(ctypes.c_void_p))
    if code != 0:
        return f"the fused function failed at the initial point (code {code})"
    if not abs(lp[0] - ref_lp) <= 1e-4 + 1e-9 * abs(ref_lp):
        return f"log density {lp[0]:.8g} against the graph's {ref_lp:.8g}"
    h = 1e-3
    for _ in range(2):
        v = rng.normal(size=layout.n_dim)
        v /= np.linalg.norm(v)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wide = (graph_at(x + h * v) - graph_at(x - h * v)) / (2.0 * h)
            narrow = (graph_at(x + 0.5 * h * v) - graph_at(x - 0.5 * h * v)) / h
        ref_slope, slope = (4.0 * narrow - wide) / 3.0, float(grad @ v)
        if not abs(slope - ref_slope) <= 1e-7 * (1.0 + np.abs(grad * v).sum()):
            return f"gradient along a random direction {slope:.8g} against the graph's {ref_slope:.8g}"
    return None


def compile_nutpie(built: BuiltModel, fused: bool = True):
    """nutpie's compiled model of `built` with the on-disk cache of the numba functions; returns (compiled, was_cached).

    A model that declares a fused kernel (BuiltModel.fused_kernel: the marginal trajectory models,
    inference/kernels.py; the MMRMs, inference/kernels_mmrm.py) gets that hand-written log density
    instead of the compiled graph, unless fused=False, its priors are outside what the fused
    function computes, or the fused function disagrees with the graph at the initial point
    (fused_disagreement; a warning says so). was_cached is True when the compile added no new cache entry (it loaded
    machine code instead). Where the installed nutpie, numba or PyTensor is not a version these
    patches were written for (TESTED_VERSIONS), the plain nutpie compile is used, without cache or
    fused function, and a warning says so.
    """

    model = built.model
    if not internals_supported():
        return _compile_graph(model), False
    folder = cache_dir()
    layout = fused_layout(built) if fused else None
    if layout is not None:
        before = _cache_entries(folder)
        compiled = compile_fused(model, layout, folder)
        differs = None if _verified(built, layout, folder, check=False) else fused_disagreement(built, layout, compiled.compiled_logp_func)
        if differs is None:
            _verified(built, layout, folder, check=True)
            return compiled, bool(before) and _cache_entries(folder) <= before
        warnings.warn(
            f"the fused log density of '{built.name}' disagrees with its model ({differs}); sampling the compiled graph instead",
            RuntimeWarning,
            stacklevel=2,
        )
    if folder is None:
        return _compile_graph(model), False
    before = _cache_entries(folder)
    try:
        with _cacheable_wrappers(folder), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Cannot cache compiled function")
            compiled = _compile_graph(model)
    except Exception as exc:  # noqa: BLE001 - a damaged or incompatible cache must never stop a fit
        warnings.warn(f"compiled-model cache in {folder} unusable ({type(exc).__name__}: {exc}); compiling without it", RuntimeWarning, stacklevel=2)
        return _compile_graph(model), False
    return compiled, bool(before) and _cache_entries(folder) <= before


def _compile_graph(model):
    """nutpie's numba compile of the model's graph. Numba's performance hints about the code PyTensor generates
    (e.g. np.dot on a non-contiguous view) are not the user's to act on, so they are not shown."""
    import nutpie
    from numba.core.errors import NumbaPerformanceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        return nutpie.compile_pymc_model(model, backend="numba")


# ---------------------------------------------------------------- the fused log density

_COMPILED: dict = {}


def fused_functions(kernel: str = kernels.KERNEL, cache_folder=None, variant: str = ""):
    """(logp cfunc, expand cfunc) of a fused kernel, compiled once per process; from numba's disk cache in cache_folder if given.
    `variant` (FusedLayout.variant): one of the kernel's specialised versions (kernels.callback_functions), "" the general one."""
    module = KERNELS[kernel]
    key = f"{kernel}|{variant}|{cache_folder}"
    if key in _COMPILED:
        return _COMPILED[key]
    logp_py, expand_py = module.callback_functions(variant) if variant else (module._logp_c, module._expand_c)
    cache = cache_folder is not None
    if cache:
        tag = f"{kernel}-{variant}" if variant else kernel
        register_cached(logp_py, cache_folder, f"fused-{tag}-logp-" + module.source_key())
        register_cached(expand_py, cache_folder, f"fused-{tag}-expand-" + module.source_key())
    options = kernels.CFUNC_OPTIONS  # nutpie's C interface (kernels.LOGP_SIG, EXPAND_SIG), every kernel's
    funcs = (numba.cfunc(kernels.LOGP_SIG, cache=cache, **options)(logp_py), numba.cfunc(kernels.EXPAND_SIG, cache=cache, **options)(expand_py))
    _COMPILED[key] = funcs
    return funcs



def uses_fused(compiled) -> bool:
    """Whether a compiled model from `compile_nutpie` calls a fused log density (else nutpie's compiled graph)."""
    logp = getattr(compiled, "compiled_logp_func", None)
    return any(logp is funcs[0] for funcs in _COMPILED.values())


def compile_fused(model, layout: kernels.FusedLayout, cache_folder=None):
    """A nutpie compiled model that calls the fused functions; names, dims and initial points from `model`."""
    from nutpie.compile_pymc import CompiledPyMCModel, _prepare_dims_and_coords, _rv_dict_to_flat_array_wrapper, _wrap_with_lock
    from pymc.initial_point import make_initial_point_fn

    logp_c, expand_c = fused_functions(layout.kernel, cache_folder, layout.variant)
    names, slices, shapes = layout.shape_info
    n_joined = len(model.free_RVs)
    import pytensor
    from pytensor.compile.mode import Mode

    with pytensor.config.change_flags(mode=Mode(linker="py", optimizer="fast_compile")):  # a few evaluations: nothing to compile
        point_fn = make_initial_point_fn(
            model=model, default_strategy="support_point", jitter_rvs=set(model.free_RVs), return_transformed=True
        )
    # the chains ask for initial points from several threads; PyTensor functions are not thread-safe
    initial = _rv_dict_to_flat_array_wrapper(_wrap_with_lock(point_fn), names=names[:n_joined], shapes=shapes[:n_joined])
    dims, coords = _prepare_dims_and_coords(model, layout.shape_info)
    return CompiledPyMCModel(
        _n_dim=layout.n_dim,
        dims=dims,
        _coords=coords,
        _shapes={name: tuple(shape) for name, shape in zip(names, shapes)},
        compiled_logp_func=logp_c,
        compiled_expand_func=expand_c,
        initial_point_func=initial,
        shared_data={},
        user_data=layout.ctx,
        n_expanded=layout.n_expanded,
        shape_info=layout.shape_info,
        logp_func=None,
        expand_func=None,
    )
