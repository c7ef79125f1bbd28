"""Shared fixtures (small synthetic trials), the test run's own compile cache, and the tiers' rules.

- The compile caches of a test run (deptrial's compiled models, PyTensor's compile folder) are a
  temporary folder, set before PyMC is imported or any worker process starts (workers inherit it),
  never the user's; DEPTRIAL_TEST_CACHE names a deptrial cache folder to keep between local runs.
- Every test carries exactly one tier mark: unit (no sampling, no process), smoke (tiny fits and
  end-to-end runs) or slow (long statistical checks, `-m slow`). A unit test that samples or starts
  a process fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings

if "DEPTRIAL_TEST_SCRATCH" not in os.environ:  # once per run (this file may be imported again as tests.conftest)
    os.environ["DEPTRIAL_TEST_SCRATCH"] = tempfile.mkdtemp(prefix="deptrial-test-")
_SCRATCH = os.environ["DEPTRIAL_TEST_SCRATCH"]


def pytest_configure(config):
    """Before PyMC is imported (test modules are collected after this): the run's own PyTensor compile
    folder; and for the default tiers, PyTensor's Python implementations instead of compiling C for
    each of the many small graphs they evaluate a few times (same numbers; sampling runs nutpie's
    numba code either way), without elementwise fusion: a fused elementwise op has no numpy ufunc, so
    its Python implementation loops over the elements in Python (three to four times slower prior
    predictive draws); unfused, each op is a numpy ufunc (the same arithmetic; the stabilising
    rewrites all stay). The slow tier (`-m slow`) evaluates large graphs thousands of times and
    keeps C and fusion, as does DEPTRIAL_TEST_C=1. Worker processes inherit the setting."""
    if "DEPTRIAL_TEST_FLAGS" in os.environ:
        return
    marks = config.getoption("markexpr") or ""
    slow = "slow" in marks and "not slow" not in marks
    python = not (slow or os.environ.get("DEPTRIAL_TEST_C"))
    flags = [f"base_compiledir={_SCRATCH}/pytensor"] + (["cxx=", "optimizer_excluding=fusion"] if python else [])
    os.environ["PYTENSOR_FLAGS"] = ",".join(filter(None, [os.environ.get("PYTENSOR_FLAGS", ""), *flags]))
    os.environ["DEPTRIAL_TEST_FLAGS"] = os.environ["PYTENSOR_FLAGS"]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")

import pytest  # noqa: E402

from data import TrialParameters, load_dataset, simulate_trial  # noqa: E402

TIERS = ("unit", "smoke", "slow")
os.environ["DEPTRIAL_CACHE"] = os.environ.get("DEPTRIAL_TEST_CACHE") or os.path.join(_SCRATCH, "deptrial")


def pytest_sessionfinish(session, exitstatus):
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the run's scratch is shared by its workers: the controller removes it
        shutil.rmtree(_SCRATCH, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid}: needs exactly one tier mark of {TIERS}, has {tiers or 'none'}")


@pytest.fixture(autouse=True)
def _unit_tests_neither_sample_nor_start_processes(request, monkeypatch):
    """A test marked unit that samples or starts a process is mis-marked: make it fail."""
    if request.node.get_closest_marker("unit") is None:
        return
    import multiprocessing.process
    import subprocess

    import nutpie
    import pymc

    def refuse(what):
        def call(*args, **kwargs):
            raise AssertionError(f"a unit test must not {what}: mark it smoke (or slow)")

        return call

    monkeypatch.setattr(nutpie, "sample", refuse("sample with nutpie"))
    monkeypatch.setattr(pymc, "sample", refuse("sample with PyMC"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a process"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse("start a process"))


def write_trial(folder, **overrides):
    params = TrialParameters(**overrides)
    trial = simulate_trial(params)
    trial.write(folder)
    return trial


@pytest.fixture(scope="session")
def small_trial_dir(tmp_path_factory):
    """A 60-participant synthetic trial (fast to fit), with biomarkers."""
    folder = tmp_path_factory.mktemp("trials") / "small"
    write_trial(folder, n_participants=60, seed=7)
    return folder


@pytest.fixture(scope="session")
def small_trial(small_trial_dir):
    return load_dataset(small_trial_dir)
