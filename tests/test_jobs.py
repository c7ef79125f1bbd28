"""Parallel model fits (inference/jobs.py): worker failures surface with the model's name; log prefixes."""

from __future__ import annotations

import io

import pytest

from inference import jobs
from inference.jobs import WorkerFailed, _Prefixed, default_jobs, fit_models
from inference.sampling import SamplerSettings


@pytest.mark.unit
def test_prefixed_stream_marks_every_line_once():
    buf = io.StringIO()
    out = _Prefixed(buf, "[headline] ")
    out.write("compiling")
    out.write(" done\nsampling\n\n")
    out.write("x")
    assert buf.getvalue() == "[headline] compiling done\n[headline] sampling\n\n[headline] x"
    assert not out.isatty()


@pytest.mark.unit
@pytest.mark.parametrize("cores, expected", [
    (1, {0: 1, 1: 1, 2: 1, 3: 1, 8: 1}),
    (2, {0: 1, 1: 1, 2: 2, 3: 2, 8: 2}),
    (8, {0: 1, 1: 1, 2: 2, 3: 3, 8: 8, 20: 8}),
    (None, {1: 1, 3: 1}),  # os.cpu_count() may not know: one job
])
def test_default_jobs_is_one_per_model_up_to_the_cores(monkeypatch, cores, expected):
    """default_jobs(n) = one job per model, at most one per CPU core, at least one; the core count comes from os.cpu_count."""
    monkeypatch.setattr(jobs.os, "cpu_count", lambda: cores)
    assert {n: default_jobs(n) for n in expected} == expected


@pytest.mark.smoke
def test_a_failing_worker_names_its_model(small_trial):
    settings = SamplerSettings(draws=10, tune=10, chains=1, cores=1, prior_draws=5)
    fits = fit_models(["no_such_model", "null"], small_trial, "normal", settings, jobs=2, quiet=True)
    with pytest.raises(WorkerFailed) as info:
        next(fits)
    assert info.value.model == "no_such_model" and isinstance(info.value.cause, KeyError)



def _explode(name, idata, built):
    raise OSError("No space left on device")


@pytest.mark.unit
def test_a_failure_after_the_fit_is_told_apart_from_a_failed_fit(monkeypatch):
    settings = SamplerSettings(draws=10, tune=10, chains=1, cores=1, prior_draws=5)
    monkeypatch.setattr(jobs, "_fit_model", lambda *a: ("idata", {}, "built"))  # a stand-in for a fit that worked
    announced = []
    fits = fit_models(["null"], None, "normal", settings, jobs=1, after=_explode, announce=announced.append)
    with pytest.raises(WorkerFailed) as info:
        next(fits)
    assert info.value.stage == "after" and "No space left" in str(info.value.cause)
    assert announced == ["null"]

    def broken(*args):
        raise ValueError("no chain could initialise")

    monkeypatch.setattr(jobs, "_fit_model", broken)
    with pytest.raises(WorkerFailed) as info:
        next(fit_models(["null"], None, "normal", settings, jobs=1, after=_explode))
    assert info.value.stage == "fit"
