"""The work after sampling, made cheaper without changing a number: elementwise sums and products of three or more
tensors evaluated as binary numpy operations in the graphs vectorised over draws (inference.marginal), and one
BLAS thread for the steps after sampling (inference.sampling.one_blas_thread)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytensor
import pytensor.scalar.basic as ps
import pytensor.tensor as pt
import pytest
from pytensor.tensor.elemwise import Elemwise
from threadpoolctl import threadpool_info

from diagnostics.plots import _steps_post
from inference.marginal import python_mode, vectorised_mode
from inference.sampling import AFTER_FIT_BLAS_THREADS, one_blas_thread

pytestmark = pytest.mark.unit


def wide_elementwise(fn) -> list:
    return [n for n in fn.maker.fgraph.toposort()
            if isinstance(n.op, Elemwise) and isinstance(n.op.scalar_op, (ps.Add, ps.Mul)) and len(n.inputs) > 2]


def test_binary_chains_give_the_numbers_of_pythons_sum_and_prod():
    a, b, c, d = (pt.matrix(n) for n in "abcd")
    out = [a + b + c + d, a * b * c, pt.exp(a) + b * c * d + a]  # rewritten into n-ary sums and products
    plain = pytensor.function([a, b, c, d], out, mode=python_mode())
    chained = pytensor.function([a, b, c, d], out, mode=vectorised_mode())
    assert wide_elementwise(plain) and not wide_elementwise(chained)  # the case is reached, and rewritten
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(50, 40)) * 10.0 ** rng.integers(-8, 8, size=(50, 40)) for _ in range(4)]
    for got, expected in zip(chained(*values), plain(*values)):
        np.testing.assert_array_equal(got, expected)  # bit for bit


def test_one_blas_thread_limits_blas_inside_only():
    def threads():
        return {d["filepath"]: d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}

    before = threads()
    inside = one_blas_thread(threads)()
    assert inside and all(n == AFTER_FIT_BLAS_THREADS for n in inside.values())
    assert threads() == before


def test_visit_figure_steps_are_matplotlibs():
    x, h = np.array([0.0, 1.0, 2.5, 3.0]), np.array([[1.0, 3.0, 2.0, 0.5], [0.0, 1.0, 1.0, 4.0]])
    fig, ax = plt.subplots()
    for row, vertices in zip(h, _steps_post(x, h)):
        (line,) = ax.step(x, row, where="post")
        np.testing.assert_array_equal(vertices, line.get_path().vertices)
    plt.close(fig)
