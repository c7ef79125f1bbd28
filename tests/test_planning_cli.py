"""plan.py end to end on a saved headline-model fit: outputs, reproducibility, Dask scheduler, refusals."""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pandas as pd
import pytest

import fit
import plan
from models.design import build_design
from planning import PlanningError, from_posterior


def save_prior_as_fit(data_dir, path, draws=100, seed=5):
    """A saved 'fit' of the headline model whose posterior group holds prior draws: every variable, dim and
    provenance attr plan.py reads, without a sampler compile (the real fit is exercised by the slow test)."""
    import warnings

    import pymc as pm

    from data import load_dataset
    from inference.idata_io import save_idata, stamp
    from models import get
    from planning import design_constants

    design = build_design(load_dataset(data_dir))
    model = get("headline").build(design).model
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Potentials are ignored by prior sampling
        prior = pm.sample_prior_predictive(draws=draws, random_seed=seed)
    idata = az.InferenceData(posterior=prior.prior)
    stamp(idata, model="headline", data_checksum=design.checksum, data_source=str(data_dir), design_constants=design_constants(design))
    save_idata(idata, path)
    return path


@pytest.fixture(scope="module")
def posterior(small_trial_dir, tmp_path_factory):
    return save_prior_as_fit(small_trial_dir, tmp_path_factory.mktemp("planfit") / "idata.nc")


BASE = ["--n-per-arm", "20", "40", "--sims", "120", "--chunk-size", "50", "--workers", "1", "--seed", "4", "--quiet"]


@pytest.mark.smoke
def test_posterior_parameters_and_design_constants(posterior, small_trial, tmp_path):
    params = from_posterior(posterior)
    design = build_design(small_trial)
    idata = az.from_netcdf(posterior)
    assert params.n_draws == 100
    assert params.participant_sd.shape == (100, 2) and np.all(params.participant_sd > 0) and np.all(np.abs(params.participant_corr) < 1)
    np.testing.assert_allclose(params.nac_change[:, 0], idata.posterior["nac_change"].isel(phase=0).values.ravel())
    assert params.marker_names == tuple(design.baseline.names)
    np.testing.assert_allclose(params.log_center, design.baseline.log_center)
    np.testing.assert_allclose(params.log_scale, design.baseline.log_scale)
    assert params.scale.treatment_end == 12 and params.scale.last_week == 16 and params.scale.integer_scores
    # the fitted marker block as a multivariate normal: its implied mean matches the draws' sequential mean
    np.testing.assert_allclose(params.marker_mean[:, 0], idata.posterior["marker_mean"].isel(marker=0).values.ravel())
    # without the recorded constants, they are rebuilt from the dataset the fit names
    del idata.posterior.attrs["design_constants"]
    again = from_posterior(idata)
    np.testing.assert_allclose(again.log_center, params.log_center)
    idata.posterior.attrs["data_source"] = str(tmp_path / "gone")
    with pytest.raises(PlanningError, match="design-prior"):
        from_posterior(idata)


@pytest.mark.smoke
def test_plan_cli_writes_table_plot_and_record_reproducibly(posterior, tmp_path):
    args = ["--posterior", str(posterior), *BASE, "--enrich", "il6:1.5", "--effects", "-2", "--dual", "--target-assurance", "0.3"]
    assert plan.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert plan.main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = (pd.read_csv(tmp_path / x / "plan.csv") for x in "ab")
    pd.testing.assert_frame_equal(a, b)
    assert set(a.population) == {"all", "il6>1.5"}
    assert set(a.scenario) == {"assurance", "effect=0", "effect=-2"}
    assert len(a) == 2 * 2 * 3 and (a.sims == 120).all()
    assert {"p_success", "p_success_mcse", "interval_width", "interval_width_mcse", "expected_screened"} <= set(a.columns)
    assert (a[a.population == "all"].expected_screened == a[a.population == "all"].n_total).all()
    assert (a[a.population != "all"].expected_screened > a[a.population != "all"].n_total).all()
    # MCSE is the binomial one
    np.testing.assert_allclose(a.p_success_mcse, np.sqrt(a.p_success * (1 - a.p_success) / a.sims), rtol=1e-5)  # CSV keeps 6 digits
    # default dropout comes from the fitted trial's observed dropout by week 12
    rec = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert 0 < rec["designs"]["dropout"] < 0.6 and rec["designs"]["primary_week"] == 12
    assert rec["analysis"]["dual"] is True and rec["analysis"]["prior_sd"] == pytest.approx(6.0)
    assert rec["timings"]["trials"] == 12 * 120
    best = pd.read_csv(tmp_path / "a" / "smallest_n.csv")
    assert set(best.population) == {"all", "il6>1.5"}
    assert (tmp_path / "a" / "plan.png").stat().st_size > 10_000
    # a different seed gives different numbers
    assert plan.main([*args, "--seed", "5", "--out", str(tmp_path / "c")]) == 0
    assert not pd.read_csv(tmp_path / "c" / "plan.csv").p_success.equals(a.p_success)


@pytest.mark.smoke
def test_plan_cli_on_a_dask_scheduler_matches_local(posterior, tmp_path):
    from dask.distributed import LocalCluster

    args = ["--posterior", str(posterior), "--design-prior", "Normal(-2, 1)", *BASE]
    assert plan.main([*args, "--out", str(tmp_path / "local")]) == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert plan.main([*args, "--scheduler", cluster.scheduler_address, "--out", str(tmp_path / "dask")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "local" / "plan.csv"), pd.read_csv(tmp_path / "dask" / "plan.csv"))


@pytest.mark.unit
def test_plan_cli_refusals_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert plan.main(["--out", str(out)]) == 2
    assert "--posterior" in capsys.readouterr().err
    assert plan.main(["--posterior", str(tmp_path / "missing.nc"), "--out", str(out)]) == 2
    assert "no saved fit" in capsys.readouterr().err
    (tmp_path / "junk.nc").write_text("not a netcdf file")
    assert plan.main(["--posterior", str(tmp_path / "junk.nc"), "--out", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--enrich", "tnf:2", "--out", str(out)]) == 2
    assert "unknown biomarker 'tnf'" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Uniform(0, 1)", "--out", str(out)]) == 2
    assert "Normal(MEAN, SD)" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--allocation", "2:0", "--out", str(out)]) == 2
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--primary-week", "30", "--weeks", "0", "30", "--out", str(out)]) == 2
    assert "beyond the fitted trial's last week" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--n-per-arm", "30", "--sims", "50", "--workers", "1", "--quiet", "--out", str(out), "--force"]) == 0
    assert (out / "plan.csv").exists()


@pytest.mark.slow
def test_plan_from_a_real_fit(small_trial_dir, tmp_path):
    out = tmp_path / "fit"
    assert fit.main(["--data", str(small_trial_dir), "--model", "headline", "--draws", "200", "--tune", "300", "--chains", "2", "--prior-draws", "10", "--seed", "5", "--out", str(out), "--quiet"]) == 0
    idata = az.from_netcdf(out / "headline" / "idata.nc")
    assert json.loads(idata.posterior.attrs["design_constants"])["treatment_end"] == 12
    assert plan.main(["--posterior", str(out / "headline" / "idata.nc"), *BASE, "--enrich", "crp:3", "--mcmc-check", "5", "--out", str(tmp_path / "plan")]) == 0
    rec = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert rec["parameters"]["n_draws"] == 400 and rec["mcmc_agreement"]["trials"] == 5
    assert (tmp_path / "plan" / "mcmc_agreement.csv").exists()
