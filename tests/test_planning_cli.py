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


def save_mmrm_fit(data_dir, path, draws=40, seed=3, params=None, effect_jitter=0.5):
    """A saved fit of the MMRM built by hand: the Bayesian MMRM's posterior variables (visit_mean,
    nac_visit_effect (active_arm x visit), baseline_slope, visit_sd, visit_corr) around the MMRM implied by
    `params` (default: the published-trial calibration; one change per active arm of the data), with the fit's
    trial_data (the validated dataset, its meta naming the arms) and provenance, as fit.py writes them.
    effect_jitter: the SD of the draws of nac_visit_effect about the truth."""
    from data import load_dataset
    from inference.idata_io import save_idata, stamp
    from planning import design_constants, fixed_parameters, implied_mmrm

    ds = load_dataset(data_dir)
    design = build_design(ds)
    weeks = tuple(int(w) for w in design.weeks)
    truth = implied_mmrm(params if params is not None else fixed_parameters(), weeks)
    rng = np.random.default_rng(seed)
    c, d, v = 2, draws // 2, len(weeks) - 1
    jitter = lambda a, sd: np.broadcast_to(a, (c, d) + a.shape[1:]) + sd * rng.standard_normal((c, d) + a.shape[1:])  # noqa: E731
    sigma = truth.sigma()[0]
    sd = np.sqrt(np.diag(sigma))
    post = {
        "visit_mean": jitter(truth.visit_mean, 0.5),
        "nac_visit_effect": jitter(truth.nac_visit_effect, effect_jitter),
        "baseline_slope": jitter(truth.baseline_slope, 0.05),
        "visit_sd": np.broadcast_to(sd, (c, d, v)) * np.exp(0.05 * rng.standard_normal((c, d, v))),
        "visit_corr": np.broadcast_to(sigma / np.outer(sd, sd), (c, d, v, v)).copy(),
    }
    dims = {"visit_mean": ["visit"], "nac_visit_effect": ["active_arm", "visit"], "baseline_slope": ["visit"], "visit_sd": ["visit"],
            "visit_corr": ["visit", "visit2"]}
    coords = {"visit": list(weeks[1:]), "visit2": list(weeks[1:]), "active_arm": list(design.active_arms)}
    idata = az.from_dict(posterior=post, dims=dims, coords=coords)
    idata.add_groups(trial_data=ds)
    stamp(idata, model="mmrm", data_checksum=design.checksum, data_source=str(data_dir), design_constants=design_constants(design))
    save_idata(idata, path)
    return path


@pytest.fixture(scope="module")
def mmrm_posterior(small_trial_dir, tmp_path_factory):
    return save_mmrm_fit(small_trial_dir, tmp_path_factory.mktemp("mmrmfit") / "idata.nc")


BASE = ["--n-per-arm", "20", "40", "--sims", "120", "--chunk-size", "50", "--workers", "1", "--seed", "4", "--quiet"]
# the tests of outputs, reproducibility and the Dask scheduler use the completers' ANCOVA (the fastest analysis);
# the MMRM analysis from an MMRM fit is test_plan_cli_from_an_mmrm_fit_with_the_new_options
ANCOVA = ["--analysis", "ancova"]


@pytest.mark.smoke
def test_posterior_parameters_and_design_constants(posterior, small_trial, tmp_path):
    params = from_posterior(posterior)
    design = build_design(small_trial)
    idata = az.from_netcdf(posterior)
    assert params.n_draws == 100
    assert params.participant_sd.shape == (100, 2) and np.all(params.participant_sd > 0) and np.all(np.abs(params.participant_corr) < 1)
    np.testing.assert_allclose(params.nac_change[:, 0, 0], idata.posterior["nac_change"].isel(phase=0).values.ravel())
    assert params.marker_names == tuple(design.baseline.names)
    np.testing.assert_allclose(params.log_center, design.baseline.log_center)
    np.testing.assert_allclose(params.log_scale, design.baseline.log_scale)
    assert params.scale.treatment_end == 12 and params.scale.last_week == 16 and params.scale.integer_scores
    # the fitted marker block as a multivariate normal: its implied mean matches the draws' sequential mean
    np.testing.assert_allclose(params.marker_mean[:, 0], idata.posterior["marker_mean"].isel(marker=0).values.ravel())
    # new sites' spread: per draw, the SD of the fitted site offsets; the fitted trial's number of sites
    offsets = idata.posterior["site_effect"].stack(s=("chain", "draw")).transpose("s", "site").values
    np.testing.assert_allclose(params.site_sd, offsets.std(axis=1, ddof=1))
    assert params.source["sites"] == len(np.unique(small_trial["site"].values)) > 1
    # without the recorded constants, they are rebuilt from the dataset the fit names
    del idata.posterior.attrs["design_constants"]
    again = from_posterior(idata)
    np.testing.assert_allclose(again.log_center, params.log_center)
    idata.posterior.attrs["data_source"] = str(tmp_path / "gone")
    with pytest.raises(PlanningError, match="design-prior"):
        from_posterior(idata)


@pytest.mark.smoke
def test_plan_cli_writes_table_plot_and_record_reproducibly(posterior, tmp_path):
    args = ["--posterior", str(posterior), *BASE, *ANCOVA, "--enrich", "il6:1.5", "--effects", "-2", "--dual", "--target-assurance", "0.3"]
    assert plan.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert plan.main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = (pd.read_csv(tmp_path / x / "plan.csv") for x in "ab")
    pd.testing.assert_frame_equal(a, b)
    assert set(a.population) == {"all", "il6>1.5"}
    assert set(a.scenario) == {"assurance", "vague", "effect=0", "effect=-2"}
    assert len(a) == 2 * 2 * 4 and (a.sims == 120).all()
    assert (a.analysis == "ancova").all() and (a.dropout_mechanism == "mar").all() and (a.expected_n == a.n_total).all()
    assert {"p_success", "p_success_mcse", "interval_width", "interval_width_mcse", "expected_screened"} <= set(a.columns)
    assert (a[a.population == "all"].expected_screened == a[a.population == "all"].n_total).all()
    assert (a[a.population != "all"].expected_screened > a[a.population != "all"].n_total).all()
    # MCSE is the binomial one
    np.testing.assert_allclose(a.p_success_mcse, np.sqrt(a.p_success * (1 - a.p_success) / a.sims), rtol=1e-5)  # CSV keeps 6 digits
    # default dropout comes from the fitted trial's observed dropout by week 12
    rec = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert 0 < rec["designs"]["dropout"] < 0.6 and rec["designs"]["primary_week"] == 12
    assert rec["designs"]["dropout_source"] == "fitted trial: observed loss by visit and arm"
    assert rec["analysis"]["dual"] is True and rec["analysis"]["prior_sd"] == pytest.approx(6.0)
    assert rec["timings"]["trials"] == 16 * 120
    best = pd.read_csv(tmp_path / "a" / "smallest_n.csv")
    assert set(best.population) == {"all", "il6>1.5"}
    assert (tmp_path / "a" / "plan.png").stat().st_size > 10_000
    page = assert_self_contained_page(tmp_path / "a", "ancova", "il6&gt;1.5", "effect=-2", "<td>none</td>")
    assert "Interim looks</h2>" not in page
    # a different seed gives different numbers
    assert plan.main([*args, "--seed", "5", "--out", str(tmp_path / "c")]) == 0
    assert not pd.read_csv(tmp_path / "c" / "plan.csv").p_success.equals(a.p_success)


def assert_self_contained_page(folder, *texts):
    """plan.html beside plan.csv: no external resource, figures as data URIs, the settings and the table."""
    page = (folder / "plan.html").read_text(encoding="utf-8")
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    assert "data:image/png;base64," in page
    assert "Settings" in page and "parameter source" in page and "dropout mechanism" in page and "interim looks" in page
    assert "Table (plan.csv)" in page and page.count("<tr>") > len(pd.read_csv(folder / "plan.csv"))
    for text in texts:
        assert text in page, text
    return page


def observed_loss(data_dir, week):
    """Per arm (placebo, NAC): the fraction who attend no visit at or after `week`, from the dataset files."""
    import pandas as pd

    visits = pd.read_csv(data_dir / "visits.csv").dropna(subset=["madrs"])
    parts = pd.read_csv(data_dir / "participants.csv")
    last = visits.groupby("participant_id")["week"].max()
    parts["last"] = parts["participant_id"].map(last)
    return tuple(float((parts[parts.arm == arm]["last"] < week).mean()) for arm in ("placebo", "nac"))


@pytest.mark.smoke
def test_plan_cli_from_an_mmrm_fit_with_the_new_options(mmrm_posterior, small_trial_dir, tmp_path):
    """python plan.py --posterior <an MMRM fit> --analysis mmrm --dropout-mechanism mar --interim 0.5 --alpha:
    full trials from the MMRM, dropout by visit and arm calibrated to the fitted trial, plain and robust
    assurance, an interim look, thresholds calibrated to a type I error."""
    from planning import from_posterior

    params = from_posterior(mmrm_posterior)
    assert params.family == "mmrm" and params.visit_weeks == (2, 4, 6, 8, 12, 16)
    trial = az.from_netcdf(mmrm_posterior).trial_data
    base = trial["score"].sel(week=0).values
    assert params.baseline_mean[0] == pytest.approx(base.mean()) and params.baseline_sd[0] == pytest.approx(base.std(ddof=1))
    out = tmp_path / "mmrm"
    args = ["--posterior", str(mmrm_posterior), "--analysis", "mmrm", "--dropout-mechanism", "mar", "--n-per-arm", "30", "60", "--sims", "100",
            "--chunk-size", "50", "--workers", "1", "--seed", "2", "--quiet", "--out", str(out)]
    assert plan.main([*args, "--interim", "0.5", "--alpha", "0.05", "--calibration-sims", "200"]) == 0
    a = pd.read_csv(out / "plan.csv")
    assert {"p_stop_efficacy_look1", "p_stop_futility_look1", "look1_week", "look1_information", "threshold", "efficacy_threshold",
            "calibration_type1"} <= set(a.columns)
    assert (a.calibration_type1 <= 0.05).all() and (a.efficacy_threshold == 0.995).all() and a.threshold.between(0.5, 1).all()
    assert (a.look1_information == 0.5).all()
    rec = json.loads((out / "plan.json").read_text())
    assert rec["calibration"]["alpha"] == 0.05 and len(rec["calibration"]["thresholds"]) == 2
    assert_self_contained_page(out, "type I error calibration", "at most 0.05")
    assert plan.main([*args, "--force"]) == 0
    a = pd.read_csv(out / "plan.csv")
    assert {"analysis", "dropout_mechanism", "expected_n", "assurance", "assurance_robust", "dropout_control", "dropout_treatment", "bias"} <= set(a.columns)
    assert (a.analysis == "mmrm").all() and (a.dropout_mechanism == "mar").all() and (a.expected_n == a.n_total).all()
    assert (a.failed_analyses == 0).all()
    control, treatment = observed_loss(small_trial_dir, 12)
    np.testing.assert_allclose(a.dropout_control, round(control, 4)) and np.testing.assert_allclose(a.dropout_treatment, round(treatment, 4))
    assert (a.dropout_source == "fitted trial: observed loss by visit and arm").all()
    # the truth at week 12 is the posterior's NAC effect there; robust assurance lies between plain and vague
    assurance = a[a.scenario == "assurance"]
    np.testing.assert_allclose(assurance.mean_true_effect, params.nac_visit_effect[:, 0, 4].mean(), atol=0.35)
    vague = a[a.scenario == "vague"].set_index("n_per_arm").p_success
    for row in assurance.itertuples():
        assert min(row.assurance, vague[row.n_per_arm]) <= row.assurance_robust <= max(row.assurance, vague[row.n_per_arm])
    rec = json.loads((out / "plan.json").read_text())
    assert rec["parameters"]["family"] == "mmrm"
    assert rec["robust_prior"]["weight"] == 0.2
    assert rec["robust_prior"]["vague_sd"] == pytest.approx(np.sqrt(np.einsum("dvv->dv", params.sigma())[:, 4]).mean(), abs=1e-3)
    assert rec["designs"]["dropout_by_visit"]["weeks"] == [2, 4, 6, 8, 12]
    assert_self_contained_page(out, "mmrm", "mar (score effect", "weight 0.2 on Normal(0,")
    # options: ancova, per-arm dropout not at random, entry screening, no robust component
    out2 = tmp_path / "ancova"
    assert plan.main([*args[:-1], str(out2), "--analysis", "ancova", "--dropout", "0.3,0.1", "--dropout-mechanism", "mnar", "--entry-min", "24",
                      "--robust-weight", "0"]) == 0
    b = pd.read_csv(out2 / "plan.csv")
    assert (b.analysis == "ancova").all() and (b.dropout_mechanism == "mnar").all() and (b.entry_min == 24).all()
    assert (b.dropout_control == 0.3).all() and (b.dropout_treatment == 0.1).all() and "vague" not in set(b.scenario)
    assert (b.assurance_robust == b.assurance).all()
    assert (b.expected_screened > b.n_total).all()  # some people fail the entry criterion
    assert abs(b.realised_dropout - (0.3 + 0.1) / 2).max() < 0.05


@pytest.mark.smoke
def test_plan_cli_on_a_dask_scheduler_matches_local(posterior, tmp_path):
    from dask.distributed import LocalCluster

    args = ["--posterior", str(posterior), "--design-prior", "Normal(-2, 1)", *BASE, *ANCOVA, "--robust-weight", "0"]
    assert plan.main([*args, "--out", str(tmp_path / "local")]) == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
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
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--dropout", "0.2,1.2", "--out", str(out)]) == 2
    assert "--dropout" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--dropout-mechanism", "informative", "--out", str(out)]) == 2
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--robust-weight", "1", "--out", str(out)]) == 2
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--interim", "0.5", "1.2", "--out", str(out)]) == 2
    assert "--interim" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--interim", "0.5", "--futility", "1", "--out", str(out)]) == 2
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--interim", "0.5", "--accrual-per-week", "0", "--out", str(out)]) == 2
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--interim", "0.5", "--interim-weeks", "20", "--out", str(out)]) == 2
    assert "not allowed with" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--n-per-arm", "30", "--interim-weeks", "1", "--out", str(out)]) == 2
    assert "interim look at week 1 for 30 per arm" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--alpha", "0.6", "--out", str(out)]) == 2
    assert "--alpha must be in (0, 0.5)" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--alpha", "0.025", "--calibration-sims", "100", "--out", str(out)]) == 2
    assert "--calibration-sims 400" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--n-per-arm", "30", "--sims", "20", "--interim", "0.5", "--efficacy", "0.6",
                      "--alpha", "0.05", "--calibration-sims", "200", "--out", str(out)]) == 2
    assert "raise --efficacy" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--n-per-arm", "30", "--sims", "50", "--workers", "1", "--quiet", "--out", str(out), "--force",
                      "--interim", "0.4", "0.7", "--accrual-per-week", "3"]) == 0
    table = pd.read_csv(out / "plan.csv")
    assert {"p_stop_efficacy", "p_stop_futility", "p_stop_futility_look1", "p_stop_efficacy_look2", "expected_duration_weeks"} <= set(table.columns)
    assert (table.expected_n <= table.n_total).all() and (table.expected_duration_weeks <= 59 / 3 + 12 + 1e-9).all()
    rec = json.loads((out / "plan.json").read_text())
    assert rec["interim"]["fractions"] == [0.4, 0.7] and rec["interim"]["futility"] == 0.1 and rec["interim"]["efficacy"] == 0.995
    page = assert_self_contained_page(out, "0.4, 0.7 of participants", "futility if PPoS &lt; 0.1", "p_stop_futility_look1", "design prior on the effect Normal(-2, 1)")
    assert "Interim looks</h2>" in page and page.count("data:image/png;base64,") == 2
    # looks by calendar week
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--n-per-arm", "30", "--sims", "50", "--workers", "1", "--quiet", "--out", str(out), "--force",
                      "--interim-weeks", "16", "24", "--accrual-per-week", "3"]) == 0
    table = pd.read_csv(out / "plan.csv")
    assert (table.look1_week == 16).all() and (table.look2_week == 24).all() and np.allclose(table.look1_information, 13 / 60)  # entered by week 16 - 12: participants 0..12
    assert json.loads((out / "plan.json").read_text())["interim"]["weeks"] == [16, 24]
    assert_self_contained_page(out, "at calendar weeks 16, 24")


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
