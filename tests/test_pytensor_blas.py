"""PyTensor's C code links the scipy-openblas wheel's BLAS (models/pytensor_blas.py): no warning, numpy's numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.pytensor_blas import BLAS_ROUTINES, PREFIX, blas_flags

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import warnings
warnings.simplefilter("error")  # PyTensor's "could not link to a BLAS installation" warning fails the run
import models
from models.pytensor_blas import STATUS
assert STATUS["linked"], STATUS
import numpy as np, pytensor, pytensor.tensor as pt
a, v = pt.matrix("a"), pt.vector("v")
f = pytensor.function([a, v], [pt.dot(a, v), 2.0 * pt.dot(a, a.T)])
ops = {type(n.op).__name__ for n in f.maker.fgraph.toposort()}
assert ops & {"CGemv", "Gemv"} and ops & {"Dot22Scalar", "Gemm", "Dot22"}, ops
x = np.random.default_rng(0).normal(size=(40, 40))
r = f(x, x[0])
np.testing.assert_allclose(r[0], x @ x[0], rtol=1e-12)
np.testing.assert_allclose(r[1], 2 * x @ x.T, rtol=1e-12)
print("ok")
"""


@pytest.mark.unit
def test_flags_name_the_wheel_library_and_rename_every_routine():
    flags = blas_flags()
    assert flags is not None, "scipy-openblas32 is a dependency and carries the prefixed routines"
    assert "-lscipy_openblas" in flags and "-Wl,-rpath," in flags
    for routine in ("dgemm_", "dgemv_", "sdot_", "dger_"):
        assert f"-D{routine}={PREFIX}{routine}" in flags
    assert len(set(BLAS_ROUTINES)) == len(BLAS_ROUTINES)


@pytest.mark.smoke
def test_c_backend_uses_the_blas_without_warning(tmp_path):
    """In a process with PyTensor's C backend (the default tiers run without it), BLAS ops compile, link and agree with numpy."""
    flags = os.environ.get("PYTENSOR_FLAGS", "")
    env = {**os.environ, "PYTENSOR_FLAGS": ",".join(f for f in flags.split(",") if f and not f.startswith("cxx=")) + f",compiledir={tmp_path}"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
