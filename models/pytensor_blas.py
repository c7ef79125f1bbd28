"""PyTensor's C backend linked to the BLAS of the scipy-openblas wheel, so no pip install warns or degrades.

Where PyTensor compiles C (the prior predictive, posterior computations, the slow test tier), its
matrix products call a BLAS through Fortran symbols (dgemm_, dgemv_, ...). A pip install has no
system BLAS for it to find, so PyTensor warns "could not link to a BLAS installation" and runs
those products in Python. The scipy-openblas32 wheel (the OpenBLAS build that scipy's own wheels
bundle) carries every BLAS routine under the prefix 'scipy_' (scipy_dgemm_, ...). Here PyTensor is
pointed at that library, and each routine it calls is renamed to its prefixed symbol by a
preprocessor definition, which PyTensor passes to the compiler together with the link flags.

Nothing changes when the user has set blas__ldflags (PYTENSOR_FLAGS or .pytensorrc), when PyTensor
has no C compiler, or when the wheel is missing or does not carry the prefixed symbols: then the
flags stay as PyTensor finds them. `link_blas` runs once, when `models` is imported, before any
graph is compiled.
"""

from __future__ import annotations

import ctypes
import os

# the BLAS routines PyTensor's C code calls or declares (pytensor/tensor/blas*.py, c_code/)
BLAS_ROUTINES = tuple(
    f"{kind}{name}_"
    for name in ("gemm", "gemv", "ger", "dot", "scal", "axpy", "copy", "swap", "symm", "syrk", "trmm", "trsm", "gbmv", "symv")
    for kind in "sdcz"
    if not (name in ("ger", "dot", "symv") and kind in "cz")
) + ("zdscal_",)
PREFIX = "scipy_"

STATUS = {"linked": False, "reason": "not yet run"}


def _user_set() -> bool:
    import pytensor

    try:
        pytensor.config.fetch_val_for_key("blas__ldflags")
    except KeyError:
        return False
    return True


def blas_flags() -> str | None:
    """The ldflags string linking the scipy-openblas32 wheel's library, or None when it cannot be used."""
    try:
        import scipy_openblas32 as sob
    except ImportError:
        return None
    lib_dir = sob.get_lib_dir()
    name = sob.get_library()
    path = os.path.join(lib_dir, f"lib{name}.so")
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    if not all(hasattr(lib, PREFIX + routine) for routine in ("dgemm_", "dgemv_", "sgemm_", "ddot_")):
        return None
    defines = " ".join(f"-D{routine}={PREFIX}{routine}" for routine in BLAS_ROUTINES)
    return f"-L{lib_dir} -l{name} -Wl,-rpath,{lib_dir} {defines}"


def link_blas() -> dict:
    """Point PyTensor's blas__ldflags at the scipy-openblas32 wheel unless the user chose a BLAS; returns STATUS."""
    import pytensor

    if _user_set():
        STATUS.update(linked=False, reason="blas__ldflags set by the user")
    elif not pytensor.config.cxx:
        STATUS.update(linked=False, reason="no C compiler (PyTensor uses its Python implementations)")
    elif os.name != "posix":
        STATUS.update(linked=False, reason="only linked on POSIX systems")
    else:
        flags = blas_flags()
        if flags is None:
            STATUS.update(linked=False, reason="scipy-openblas32 not installed or without its prefixed symbols")
        else:
            pytensor.config.blas__ldflags = flags
            STATUS.update(linked=True, reason="scipy-openblas32")
    return STATUS
