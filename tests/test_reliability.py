"""Runs that cannot lose or corrupt results: atomic outputs under SIGKILL, the output lock, stale
locks, --force, bit-identical draws for a seed (across processes and --cores), and sampler
failures turned into advice and an exit code instead of a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fit
from data.atomic import OutputBusy, atomic_folder, lock_path, locked_output, output_lock, recover_interrupted
from deptrial import orchestrate

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ["--draws", "30", "--tune", "40", "--chains", "2", "--cores", "2", "--prior-draws", "10", "--seed", "11", "--quiet"]
TINY = ["--model", "headline", *SETTINGS]


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def fit_process(data: Path, out: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "fit.py"), "--data", str(data), "--out", str(out), *TINY, *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


# ---------------------------------------------------------------- lock and atomic folder (no sampling)
HOLDER = """
import sys, time
from data.atomic import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.smoke  # starts a process that holds the lock
def test_second_writer_is_refused_and_stale_lock_is_ignored(tmp_path, small_trial_dir, capsys):
    out = tmp_path / "results"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusy, match=f"process {holder.pid}"):
            with locked_output(out):
                pass
        code = fit.main(["--data", str(small_trial_dir), "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and f"is being written by process {holder.pid}" in err and "choose another --out" in err
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert lock_path(out).exists(), "a killed holder leaves its lock file behind"
    with locked_output(out) as tmp:  # ...which does not block: the kernel released its flock
        (tmp / "ok.txt").write_text("done")
    assert (out / "ok.txt").read_text() == "done"
    assert not lock_path(out).exists(), "a clean exit removes the lock file"


@pytest.mark.unit
def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with output_lock(tmp_path / "o"):
        with pytest.raises(OutputBusy):
            with output_lock(tmp_path / "o"):
                pass
    with output_lock(tmp_path / "o"):
        pass


@pytest.mark.unit
def test_atomic_folder_never_replaces_silently_and_cleans_up(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(FileExistsError, match="created by another process"):
        with atomic_folder(target) as tmp:
            (tmp / "a.txt").write_text("mine")
            target.mkdir()  # another writer got there first
            (target / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "theirs.txt").exists()
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "other") as tmp:
            (tmp / "half.nc").write_text("partial")
            raise RuntimeError("killed halfway")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.unit
def test_recovery_restores_previous_output_moved_aside_by_a_killed_run(tmp_path):
    target = tmp_path / "out"
    (tmp_path / ".out.old-x1" / "previous").mkdir(parents=True)
    (tmp_path / ".out.old-x1" / "previous" / "run.json").write_text("{}")
    (tmp_path / ".out.tmp-x2" / "headline").mkdir(parents=True)
    done = recover_interrupted(target)
    assert len(done) == 2 and (target / "run.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.unit
def test_force_is_needed_to_replace_and_replaces_whole(tmp_path, small_trial_dir, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("last month")

    def fake_run(specs, ds, design, source, changes, settings, tmp, out, **kwargs):
        (tmp / "run.json").write_text("{}")
        return {}, {}, None, None

    monkeypatch.setattr(orchestrate, "run_models", fake_run)
    assert fit.main(["--data", str(small_trial_dir), "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "old.txt").exists()
    assert fit.main(["--data", str(small_trial_dir), "--out", str(out), "--quiet", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------- killed runs (real fits, tiny draws)
@pytest.fixture(scope="module")
def complete_run(small_trial_dir, tmp_path_factory):
    """One complete fit.py run in its own process on the small trial plus one exact duplicate visit row
    (removed by the loader, so the analysis is the small trial's); returns its posterior draws and
    checks the removal is printed and recorded in run.json."""
    import shutil

    import arviz as az

    root = tmp_path_factory.mktemp("complete")
    data = root / "data"
    shutil.copytree(small_trial_dir, data)
    visits = (data / "visits.csv").read_text()
    (data / "visits.csv").write_text(visits + visits.splitlines()[3] + "\n")
    out = root / "results"
    proc = fit_process(data, out)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert "the loader changed 1 thing(s)" in err and "exact duplicate" in err
    run = json.loads((out / "run.json").read_text())
    assert [c["action"] for c in run["data_changes"]] == ["dropped_duplicate"]
    return data, posterior_draws(az.from_netcdf(out / "headline" / "idata.nc"))


def kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> float:
    """SIGKILL the process as soon as ready() is true; returns seconds after start."""
    t0 = time.perf_counter()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill point: {proc.communicate()[1][-2000:]}")
        if time.perf_counter() - t0 > timeout:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # reap it and close its pipes
    return time.perf_counter() - t0


@pytest.mark.smoke
def test_run_killed_at_any_moment_leaves_previous_results_whole(tmp_path, small_trial_dir, monkeypatch):
    out = tmp_path / "results"
    (out / "headline").mkdir(parents=True)  # last month's results (content is irrelevant to atomicity)
    (out / "run.json").write_text('{"previous": true}')
    (out / "headline" / "idata.nc").write_bytes(os.urandom(4096))
    before = tree_digest(out)
    parent = out.parent
    t_start = [0.0]

    def after(seconds):
        return lambda: time.perf_counter() - t_start[0] > seconds

    def temp_exists():
        return any(parent.glob(".results.tmp-*"))

    def writing_outputs():
        return any(parent.glob(".results.tmp-*/headline"))

    moments = {"while importing": after(1.0), "while sampling": temp_exists, "while writing outputs": writing_outputs}
    for moment, ready in moments.items():
        t_start[0] = time.perf_counter()
        proc = fit_process(small_trial_dir, out, "--force")
        kill_when(proc, ready)
        assert tree_digest(out) == before, f"killed {moment}: the previous results changed"
    # the next run cleans up what the killed ones left and replaces the results as a whole
    assert any(parent.glob(".results.tmp-*")), "the kill while writing left its temporary folder"
    def stub(specs, ds, design, source, changes, settings, tmp, out, **kwargs):  # only the output machinery matters here
        (tmp / "run.json").write_text("{}")
        return {}, {}, None, None

    monkeypatch.setattr(orchestrate, "run_models", stub)
    assert fit.main(["--data", str(small_trial_dir), "--out", str(out), "--force", "--quiet"]) == 0
    assert sorted(p.name for p in parent.iterdir()) == ["results"], "temporary folders and the lock are gone"


# ---------------------------------------------------------------- same seed, same draws
def posterior_draws(idata) -> dict[str, np.ndarray]:
    return {k: v.values for k, v in idata.posterior.data_vars.items()}


def sampler_runs(built, variants: dict[str, dict]) -> dict[str, dict[str, np.ndarray]]:
    """Posterior draws of `built` through inference.sampling.sample_posterior for each settings variant."""
    from inference.sampling import SamplerSettings, sample_posterior

    out = {}
    for name, extra in variants.items():
        s = SamplerSettings(**{"draws": 30, "tune": 40, "chains": 2, "cores": 2, "prior_draws": 10, "seed": 11, **extra})
        idata, _ = sample_posterior(built, s, quiet=True)
        out[name] = posterior_draws(idata)
    return out


VARIANTS = {"a": {}, "rerun": {}, "one_core": {"cores": 1}, "four_chains": {"chains": 4}, "other_seed": {"seed": 12}}


def check_determinism(runs: dict[str, dict[str, np.ndarray]]) -> None:
    a = runs["a"]
    for name in a:
        assert np.array_equal(a[name], runs["rerun"][name], equal_nan=True), f"{name}: a rerun with the same seed differs"
        assert np.array_equal(a[name], runs["one_core"][name], equal_nan=True), f"{name}: --cores changed the draws"
        assert np.array_equal(a[name], runs["four_chains"][name][:2], equal_nan=True), f"{name}: more chains changed the first chains"
    assert not all(np.array_equal(a[n], runs["other_seed"][n]) for n in a), "the seed must matter"


@pytest.mark.smoke
def test_same_seed_gives_bit_identical_draws_small_model(small_trial):
    """nutpie through sample_posterior: same seed -> identical draws, whatever --cores; more chains
    keep the first chains' draws; another seed differs. (The treatment model's marginal form on the
    small trial: its fused log density is compiled once per test run, so nothing here compiles a
    graph; the headline model and a separate fit.py process are checked in the slow test below.)"""
    from models import build_design, get

    built = get("treatment").build(build_design(small_trial)).fast_variant()
    check_determinism(sampler_runs(built, VARIANTS))


@pytest.mark.slow
def test_same_seed_gives_bit_identical_draws_headline_across_processes(complete_run, tmp_path):
    """fit.py end to end (whatever sampling path it uses): the complete run, a run in another process
    with --cores 1, and an in-process run give bit-identical headline posterior draws."""
    import arviz as az

    data, first = complete_run
    proc = fit_process(data, tmp_path / "one_core", "--cores", "1")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert fit.main(["--data", str(data), "--out", str(tmp_path / "in_process"), *TINY]) == 0
    for other in ("one_core", "in_process"):
        draws = posterior_draws(az.from_netcdf(tmp_path / other / "headline" / "idata.nc"))
        assert set(draws) == set(first)
        for name, values in first.items():
            assert np.array_equal(values, draws[name], equal_nan=True), f"{name}: {other} differs from the first run"


# ---------------------------------------------------------------- sampler trouble
def register_broken_model(monkeypatch):
    import pymc as pm
    import pytensor.tensor as pt

    from models import registry

    def build_broken(design, priors=None, likelihood="normal"):
        with pm.Model() as model:
            x = pm.Normal("x", 0, 1)
            pm.Potential("impossible", pt.switch(x > 100, 0.0, -np.inf))  # log-density -inf at every start
        return registry.BuiltModel("broken", model, design, {}, ())

    spec = registry.ModelSpec("broken", "a model no chain can initialise (test only)", build_broken, lambda design: {})
    monkeypatch.setitem(registry.REGISTRY, "broken", spec)


@pytest.mark.smoke
def test_chain_that_cannot_initialise_gives_advice_and_exit_3(tmp_path, small_trial_dir, capsys, monkeypatch):
    register_broken_model(monkeypatch)
    out = tmp_path / "out"
    code = fit.main(["--data", str(small_trial_dir), "--model", "broken", "--out", str(out), *SETTINGS])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "sampling model 'broken' failed" in err and "initialization points failed" in err
    assert "advice: no chain could start" in err and "--likelihood student" in err
    assert "Traceback" not in err and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no output, temporary folder or lock left"


@pytest.mark.unit
def test_sampling_exception_gives_tuning_advice(tmp_path, small_trial_dir, capsys, monkeypatch):
    from inference import jobs

    def explode(*a, **k):
        raise FloatingPointError("NaN in the gradient during tuning")

    monkeypatch.setattr(jobs, "sample_all", explode)  # one model: fitted in this process
    code = fit.main(["--data", str(small_trial_dir), "--out", str(tmp_path / "out"), *TINY])
    err = capsys.readouterr().err
    assert code == 3
    assert "FloatingPointError: NaN in the gradient" in err
    for advice in ("--tune", "--target-accept", "--likelihood student"):
        assert advice in err
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_convergence_advice_names_the_remedies():
    """Divergences and low ESS: the verdict's advice names more tuning, a higher --target-accept
    and the robust model, so the user knows what to change."""
    import arviz as az

    from diagnostics.convergence import verdict

    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(size=(2, 100)), axis=1)  # a random walk: high R-hat, low ESS
    diverging = np.zeros((2, 100), dtype=bool)
    diverging[0, :5] = True
    idata = az.from_dict(posterior={"nac_change": walk}, sample_stats={"diverging": diverging})
    check = verdict(idata)
    text = check.text()
    assert not check.ok and check.divergences == 5
    for advice in ("--tune", "--target-accept", "--likelihood student", "--draws"):
        assert advice in text, f"{advice} missing from:\n{text}"


@pytest.mark.unit
def test_saved_fits_get_the_usual_permissions(tmp_path):
    import os

    import arviz as az
    import numpy as np

    from inference.idata_io import save_idata

    mask = os.umask(0o022)
    try:
        path = save_idata(az.from_dict(posterior={"a": np.zeros((1, 5))}), tmp_path / "idata.nc")
    finally:
        os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o644  # not mkstemp's private 0600


@pytest.mark.unit
def test_results_folders_and_rewritten_files_get_the_usual_permissions(tmp_path):
    import os

    from data.atomic import atomic_write_bytes

    mask = os.umask(0o022)
    try:
        with locked_output(tmp_path / "results") as tmp:
            (tmp / "sub").mkdir()
        atomic_write_bytes(tmp_path / "results" / "report.html", b"<html></html>")
    finally:
        os.umask(mask)
    assert ((tmp_path / "results").stat().st_mode & 0o777) == 0o755  # not mkdtemp's private 0700
    assert ((tmp_path / "results" / "report.html").stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600
