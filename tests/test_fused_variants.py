"""The trajectory kernel's variant without baseline markers (inference/kernels.callback_functions, compiled with the
marker block left out): bit for bit the numbers of the general callbacks on the models it serves, and it refuses a
context array that has markers."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from inference import compile as engine
from inference import kernels
from models import build_design, get


@pytest.fixture(scope="module")
def small_design(small_trial):
    return build_design(small_trial)


def _call(funcs, layout, x):
    """(return codes, log density, gradient, expanded draw) of the compiled callbacks `funcs` at x."""
    as_ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))  # noqa: E731
    ctx = layout.ctx.ctypes.data_as(ctypes.c_void_p)
    grad, lp, out = np.zeros(layout.n_dim), np.zeros(1), np.zeros(layout.n_expanded)
    codes = (funcs[0].ctypes(layout.n_dim, as_ptr(x), as_ptr(grad), as_ptr(lp), ctx),
             funcs[1].ctypes(layout.n_dim, layout.n_expanded, as_ptr(x), as_ptr(out), ctx))
    return codes, lp[0], grad, out


@pytest.mark.unit
def test_variant_without_markers_equals_the_general_callbacks(small_design):
    general = engine.fused_functions(kernels.KERNEL, engine.cache_dir())
    lean = engine.fused_functions(kernels.KERNEL, engine.cache_dir(), kernels.NO_MARKERS)
    rng = np.random.default_rng(3)
    for name in ("null", "treatment", "treatment_curved"):
        layout = engine.fused_layout(get(name).build(small_design).fast_variant())
        assert layout.kernel == kernels.KERNEL and layout.variant == kernels.NO_MARKERS, name
        for scale in (0.2, 0.7, 2.0):
            x = rng.normal(size=layout.n_dim) * scale
            codes, lp, grad, out = _call(lean, layout, x)
            ref_codes, ref_lp, ref_grad, ref_out = _call(general, layout, x)
            assert codes == ref_codes == (0, 0), name
            assert lp == ref_lp and np.array_equal(grad, ref_grad) and np.array_equal(out, ref_out), name
    # a model with markers runs on the general callbacks; the variant refuses its context array
    layout = engine.fused_layout(get("headline").build(small_design).fast_variant())
    assert layout.variant == ""
    codes, lp, _, out = _call(lean, layout, np.zeros(layout.n_dim))
    assert codes == (-1, -1) and np.isnan(lp) and np.all(out == 0.0)
