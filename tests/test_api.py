"""The Python entry point, deptrial.fit_trial: what it refuses before any fit, and what a run returns and writes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import deptrial
from deptrial import api


@pytest.fixture(scope="module")
def nobio_trial(tmp_path_factory):
    trial = deptrial.load_dataset(deptrial.DEFAULT_DATASET)
    folder = tmp_path_factory.mktemp("nobio") / "t"
    from data import TrialParameters, simulate_trial

    sim = simulate_trial(TrialParameters(n_participants=40, seed=3))
    sim.biomarkers = sim.biomarkers.iloc[0:0]
    sim.write(folder)
    return trial, deptrial.load_dataset(folder)


@pytest.mark.unit
def test_refusals_come_before_any_fit_and_write_nothing(nobio_trial, tmp_path, monkeypatch):
    trial, nobio = nobio_trial

    def no_fit(*args, **kwargs):
        raise AssertionError("a refused request must not reach the fits")

    monkeypatch.setattr(api, "_run", no_fit)
    out = tmp_path / "out"
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        deptrial.fit_trial(trial, ["treatment", "nope"], out=out)
    with pytest.raises(ValueError, match="supports likelihoods"):
        deptrial.fit_trial(trial, ["mmrm"], out=out, likelihood="student")
    with pytest.raises(deptrial.ModelDataError, match="needs baseline biomarkers"):
        deptrial.fit_trial(nobio, ["treatment", "headline"], out=out)
    with pytest.raises(ValueError, match="unknown prior 'nac_effect_sd'"):
        deptrial.fit_trial(trial, ["treatment"], out=out, priors={"treatment": {"nac_effect_sd": {"params": {"sigma": 1.0}}}})
    with pytest.raises(ValueError, match="HalfNormal.*not a valid distribution"):
        deptrial.fit_trial(trial, ["treatment"], out=out, priors={"treatment": {"residual_sd": {"params": {"sgima": 2.0}}}})
    with pytest.raises(ValueError, match="'Halfnormal' is not a PyMC distribution"):
        deptrial.fit_trial(trial, ["treatment"], out=out, priors={"treatment": {"residual_sd": {"dist": "Halfnormal", "params": {"sigma": 2.0}}}})
    with pytest.raises(ValueError, match="not among the models fitted"):
        deptrial.fit_trial(trial, ["treatment"], out=out, priors={"headline": {}})
    with pytest.raises(ValueError, match="kfold"):
        deptrial.fit_trial(trial, ["treatment"], out=out, kfold=1)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        deptrial.fit_trial(trial, ["treatment"], out=out)


@pytest.mark.unit
def test_list_models_is_the_registry():
    listed = deptrial.list_models()
    assert {"null", "treatment", "headline", "mmrm", "mediation"} <= set(listed)
    assert all(isinstance(d, str) and d for d in listed.values())


@pytest.mark.smoke
def test_a_run_returns_what_it_wrote_with_the_priors_given(small_trial, tmp_path):
    """A prior override reaches the fit and its provenance, and the result's tables are the files written
    (the comparison of several models is covered by the README example and tests/test_fit_cli.py)."""
    settings = deptrial.SamplerSettings(draws=200, tune=300, chains=2, seed=4, prior_draws=10)
    tight = {"nac_change": {"params": {"mu": 0.0, "sigma": 0.05}}}  # pins the NAC effect near 0
    run = deptrial.fit_trial(small_trial, ["treatment"], settings, out=tmp_path / "out", jobs=1, priors={"treatment": tight})
    assert set(run.fits) == {"treatment"} and run.report == tmp_path / "out" / "report.html" and run.report.is_file()
    saved = json.loads(run.fits["treatment"].idata.posterior.attrs["priors"])
    assert saved["nac_change"]["params"]["sigma"] == pytest.approx(0.05) and saved["nac_change"]["reason"] == "user override"
    est = run.estimates
    nac12 = est[(est["model"] == "treatment") & (est["week"] == 12) & est["quantity"].str.contains(" - ")].iloc[0]
    assert abs(nac12["mean"]) < 0.2, "the tight prior must hold the effect near 0"
    on_disk = pd.read_csv(tmp_path / "out" / "treatment" / "estimates.csv")
    in_memory = run.fits["treatment"].estimates
    assert list(on_disk["quantity"]) == list(in_memory["quantity"])
    numbers = in_memory.select_dtypes("number").columns
    pd.testing.assert_frame_equal(on_disk[numbers], in_memory[numbers].reset_index(drop=True), check_dtype=False, atol=1e-9)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["models"].keys() == run.run["models"].keys()
