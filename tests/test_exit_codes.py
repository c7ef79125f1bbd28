"""Exit codes that say what happened: 2 for input refused before any work, 3 for a failure once sampling (fit.py) or the
work on saved fits (diagnose.py) has started, with the stage named, no traceback, and what is left at the output folder."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

import diagnose
import fit
from deptrial import orchestrate
from deptrial.errors import FinishingFailed, RunFailed, SamplingFailed

TINY = ["--model", "null", "--jobs", "1", "--draws", "20", "--tune", "20", "--chains", "2", "--prior-draws", "5", "--seed", "2", "--quiet"]


def files_of(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def broken(message: str):
    def call(*args, **kwargs):
        raise ValueError(message)

    return call


@pytest.fixture(scope="module")
def saved(small_trial_dir, tmp_path_factory):
    """A complete tiny run of the null model."""
    out = tmp_path_factory.mktemp("saved") / "results"
    assert fit.main(["--data", str(small_trial_dir), *TINY, "--out", str(out)]) == 0
    return out


@pytest.mark.smoke
def test_a_diagnostics_failure_after_sampling_exits_3_and_leaves_nothing(small_trial_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(orchestrate, "diagnose_model", broken("no posterior predictive draws"))
    out = tmp_path / "out"
    code = fit.main(["--data", str(small_trial_dir), *TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "error: diagnosing model 'null' failed after sampling: ValueError: no posterior predictive draws" in err
    assert f"nothing was written to {out}" in err and "Traceback" not in err and "advice" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no output, temporary folder or lock left"


@pytest.mark.unit
def test_a_failure_after_sampling_over_previous_results_keeps_them(small_trial_dir, tmp_path, capsys, monkeypatch):
    """With --force, a run that fails after sampling (here a stand-in for the fits) leaves the previous results as they were."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "run.json").write_text('{"previous": true}')

    def fails_writing(specs, ds, design, source, changes, settings, tmp, out, **kwargs):
        (tmp / "run.json").write_text("{}")
        raise RunFailed("writing the report and tables", cause=ValueError("cannot draw the report"))

    monkeypatch.setattr(orchestrate, "run_models", fails_writing)
    assert fit.main(["--data", str(small_trial_dir), "--out", str(out), "--force", "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "writing the report and tables failed after sampling: ValueError: cannot draw the report" in err
    assert f"{out} still holds the previous results" in err and "Traceback" not in err
    assert files_of(out) == {Path("run.json"): b'{"previous": true}'} and sorted(p.name for p in tmp_path.iterdir()) == ["results"]


@pytest.mark.unit
def test_a_failure_moving_the_results_into_place_exits_3(small_trial_dir, tmp_path, capsys, monkeypatch):
    """The results folder appears while the run works (another process made it): the finished run is not moved over it."""
    out = tmp_path / "results"

    def another_process_writes_out(specs, ds, design, source, changes, settings, tmp, out, **kwargs):
        out.mkdir()
        return {}, {}, None, None

    monkeypatch.setattr(orchestrate, "run_models", another_process_writes_out)
    assert fit.main(["--data", str(small_trial_dir), "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert f"moving the results into place at {out} failed after sampling: FileExistsError" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and not any(out.iterdir())


@pytest.mark.smoke
def test_a_failure_diagnosing_saved_fits_exits_3_and_changes_nothing(saved, tmp_path, capsys, monkeypatch):
    out = tmp_path / "results"
    shutil.copytree(saved, out)
    before = files_of(out)
    monkeypatch.setattr(orchestrate, "diagnose_run", broken("comparison impossible"))
    code = diagnose.main([str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "diagnosing the saved fits (checks, leave-one-out, refits, comparison) failed: ValueError: comparison impossible" in err
    assert f"nothing in {out} was changed" in err and "Traceback" not in err
    assert files_of(out) == before


@pytest.mark.unit
def test_bad_input_is_refused_before_any_work_with_exit_2(small_trial_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(orchestrate, "run_models", lambda *a, **k: pytest.fail("refused input must not reach the fits"))
    out = tmp_path / "out"
    assert fit.main(["--data", str(small_trial_dir), "--model", "null", "--chains", "1", "--draws", "15", "--out", str(out)]) == 2
    assert "too few" in capsys.readouterr().err
    assert fit.main(["--data", str(small_trial_dir), "--model", "mmrm", "--likelihood", "student", "--out", str(out)]) == 2
    assert "supports likelihoods" in capsys.readouterr().err
    assert fit.main(["--data", str(small_trial_dir), "--deltas", "2,x", "--sensitivity", "--out", str(out)]) == 2
    assert "--deltas must be numbers of outcome points" in capsys.readouterr().err
    assert not out.exists()
    assert diagnose.main([str(tmp_path / "none")]) == 2
    assert "no results folder" in capsys.readouterr().err
    assert diagnose.main([str(tmp_path / "none"), "--tipping-threshold", "0.9"]) == 2
    assert "--tipping-threshold applies only with --sensitivity" in capsys.readouterr().err


@pytest.mark.unit
def test_a_failure_in_a_worker_process_keeps_its_stage():
    """A model's step that fails in a worker process comes back to the main one by pickling: stage, model and cause survive."""
    failed = FinishingFailed("diagnosing", "headline", ValueError("bad draws\nsecond line"))
    back = pickle.loads(pickle.dumps(failed))
    assert type(back) is FinishingFailed and str(back) == str(failed)
    assert str(back) == "diagnosing model 'headline' failed after sampling: ValueError: bad draws"
    back.kept = "nothing was written to results"
    assert str(back).splitlines() == ["diagnosing model 'headline' failed after sampling: ValueError: bad draws",
                                      "nothing was written to results"]
    assert isinstance(SamplingFailed("null", RuntimeError("no chain could init")), RunFailed)
