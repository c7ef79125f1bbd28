"""The Python entry point, deptrial.fit_trial: what it refuses before any fit, and what a run returns and writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import deptrial
from deptrial import orchestrate


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

    monkeypatch.setattr(orchestrate, "run_models", no_fit)
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
    with pytest.raises(ValueError, match="mass_matrix must be one of"):
        deptrial.fit_trial(trial, ["treatment"], deptrial.SamplerSettings(mass_matrix="dense"), out=out)
    with pytest.raises(ValueError, match="contrast 'nac - active': unknown arm 'active'"):
        deptrial.fit_trial(trial, ["treatment"], out=out, contrasts=["nac - placebo", "nac - active"])
    with pytest.raises(ValueError, match="pass sensitivity=True"):
        deptrial.fit_trial(trial, ["treatment"], out=out, deltas=[2, 4])
    with pytest.raises(ValueError, match="deltas must be finite"):
        deptrial.fit_trial(trial, ["treatment"], out=out, sensitivity=True, deltas=[2, float("nan")])
    with pytest.raises(ValueError, match="tipping-point threshold"):
        deptrial.fit_trial(trial, ["treatment"], out=out, sensitivity=True, tipping_threshold=0.2)
    bad = tmp_path / "ice.csv"
    bad.write_text("participant_id,week,strategy\nP0001,12,J2R\nP0001,16,CR\n")
    with pytest.raises(deptrial.DatasetError, match="more than one row for the same participant"):
        deptrial.fit_trial(trial, ["treatment"], out=out, sensitivity=True, ice=bad)
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
    run = deptrial.fit_trial(small_trial, ["treatment"], settings, out=tmp_path / "out", jobs=1, priors={"treatment": tight},
                             sensitivity=True, deltas=[1, 3], tipping_threshold=0.9, contrasts=["placebo - nac"])
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
    # the contrasts asked for: in memory as written, the reversed difference the negative of estimates.csv's
    contrasts = run.contrasts
    same_values(pd.read_csv(tmp_path / "out" / "treatment" / "contrasts.csv"), contrasts.drop(columns="model"))
    reversed12 = contrasts[(contrasts["contrast"] == "placebo - nac") & (contrasts["week"] == 12)].iloc[0]
    assert reversed12["mean"] == pytest.approx(-nac12["mean"], abs=1e-12) and reversed12["p_below_0"] == pytest.approx(1 - nac12["p_below_0"])
    assert run.run["contrasts"] == ["placebo - nac"]
    again = deptrial.api.contrast_table(run.fits["treatment"].idata, ["placebo - nac"], small_trial)  # the notebook function
    pd.testing.assert_frame_equal(again, run.fits["treatment"].contrasts)
    # the sensitivity analyses: in memory as written, and again from the notebook function on the fit (same seed: same tables)
    tables = deptrial.api.sensitivity(run.fits["treatment"].idata, small_trial, deltas=[1, 3], tipping_threshold=0.9)
    assert set(tables) == {"sensitivity", "tipping_point", "responders", "prior_sensitivity", "notes"} and tables["notes"].empty
    for name, table in run.sensitivity["treatment"].items():
        written = pd.read_csv(tmp_path / "out" / "treatment" / f"{name}.csv")
        same_values(written, table)
        pd.testing.assert_frame_equal(tables[name], table)
    sens = run.sensitivity["treatment"]["sensitivity"]
    assert list(sens["strategy"].unique()) == ["MAR", "J2R", "CR", "CIR", "delta=1", "delta=3"]
    assert sens.loc[(sens["strategy"] == "MAR") & (sens["week"] == 12), "mean"].iloc[0] == pytest.approx(nac12["mean"], abs=1e-9)
    assert (run.sensitivity["treatment"]["tipping_point"]["threshold"] == 0.9).all()
    prior = run.sensitivity["treatment"]["prior_sensitivity"].set_index("effect")
    assert prior.loc["nac_effect at week 12", "prior_sensitive"], "the tight prior does the work: flagged"
    assert "Prior-sensitive</b>" in run.report.read_text() and "nac_effect at week 12" in run.report.read_text()


def same_values(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """The same table, as written to CSV and read back (an empty text reads back as missing)."""
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            np.testing.assert_array_equal(x.to_numpy(float), y.to_numpy(float), err_msg=col)
        else:
            assert ["" if pd.isna(v) else str(v) for v in x] == ["" if pd.isna(v) else str(v) for v in y], col
