"""fit.py end to end on tiny draws: outputs, groups, provenance, estimands, the sensitivity analyses, refusals and exit codes.
(A three-arm trial's estimates, contrasts.csv and report: tests/test_submission_tables.py, whose one fit of the bundled
three-arm trial serves its tables and those checks.)"""

from __future__ import annotations

import json
import shutil

import arviz as az
import numpy as np
import pandas as pd
import pytest

import deptrial
import diagnose
import fit
from deptrial import orchestrate
from diagnostics.sensitivity_analyses import SENSITIVITY_TABLES, saved_sensitivity
from inference.storage import STORAGE
from models.effects import ESTIMAND_COLUMNS

REQUIRED_GROUPS = {"posterior", "sample_stats", "prior", "prior_predictive", "posterior_predictive", "log_likelihood", "observed_data", "constant_data"}


@pytest.fixture(scope="module")
def fitted(small_trial_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "out"
    code = fit.main(["--data", str(small_trial_dir), "--draws", "60", "--tune", "80", "--chains", "2", "--prior-draws", "20", "--seed", "3", "--jobs", "1",
                     "--out", str(out), "--quiet", "--sensitivity"])
    return code, out


SUMMARY_COLUMNS = ["quantity", "week", "marker", "unit", "mean", "sd", "hdi_3%", "hdi_97%", "p_below_0", "mcse_mean", "p_below_-2"]
SENSITIVITY_COLUMNS = {"strategy", "week", "mean", "sd", "hdi_3%", "hdi_97%", "p_below_0"}


@pytest.mark.smoke
def test_fit_writes_every_group_with_provenance(fitted, small_trial):
    code, out = fitted
    assert code == 0
    idata = deptrial.load_fit(out / "headline" / "idata.nc")
    assert REQUIRED_GROUPS <= set(idata.groups())
    attrs = idata.posterior.attrs
    assert attrs["model"] == "headline"
    assert attrs["data_checksum"] == small_trial.attrs["checksum"]
    assert int(attrs["seed"]) == 3
    assert json.loads(attrs["settings"])["mass_matrix"] == "low_rank"  # nutpie's default adaptation, recorded with the fit
    assert "pymc" in json.loads(attrs["versions"])
    priors = json.loads(attrs["priors"])
    assert priors["nac_change"]["params"]["sigma"] == pytest.approx(6.0)
    assert idata.log_likelihood["y"].sizes["obs"] == idata.observed_data["y"].sizes["obs"]
    est = pd.read_csv(out / "headline" / "estimates.csv")
    assert {"mean", "p_below_0", "p_below_-2"} <= set(est.columns)
    assert est["quantity"].str.contains("week 16").any()


@pytest.mark.smoke
def test_saved_fit_is_compact_and_diagnose_reproduces_the_run(fitted, small_trial, tmp_path):
    """idata.nc keeps no recomputable group, holds the dataset, and re-diagnosing it gives the run's tables bit for bit."""
    _, out = fitted
    stored = az.from_netcdf(out / "headline" / "idata.nc")
    assert not {"log_likelihood", "posterior_predictive"} & set(stored.groups())
    assert "participant_effects" not in stored.posterior and stored.posterior.attrs["fit_path"] == "marginal"
    assert stored.trial_data.attrs["checksum"] == small_trial.attrs["checksum"]
    assert stored.prior_predictive["y"].dtype == np.float32
    run = json.loads((out / "run.json").read_text())
    assert run["storage"]["format"] == STORAGE["format"]
    assert run["models"]["headline"]["idata_bytes"] == (out / "headline" / "idata.nc").stat().st_size
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("treatment", "null"):  # recomputed, not left over from the fit
        for table in SENSITIVITY_TABLES:
            (copy / name / f"{table}.csv").unlink(missing_ok=True)
    deptrial.rediagnose(copy, sensitivity=True)  # the sensitivity analyses from the saved fits: the fit's own tables
    for name in ("comparison_participant.csv", "comparison_visit.csv", "headline/loo_participant.csv", "null/loo_visit.csv",
                 "treatment/ppc_rates.csv", *[f"{m}/{t}.csv" for m in ("treatment", "headline") for t in SENSITIVITY_TABLES],
                 "null/responders.csv", "null/prior_sensitivity.csv"):
        assert (copy / name).read_bytes() == (out / name).read_bytes(), name
    assert not (copy / "null" / "sensitivity.csv").exists()
    assert (out / "run.json").exists() and (out / "headline" / "summary.csv").exists()


@pytest.mark.smoke
def test_every_effect_row_states_its_estimand(fitted):
    """estimates.csv keeps its columns in their order and appends the ICH E9(R1) attributes; week 12 (end of
    treatment) is hypothetical under MAR, week 16 (off-treatment follow-up) treatment policy for the end of treatment."""
    _, out = fitted
    for name in ("null", "treatment", "headline"):
        est = pd.read_csv(out / name / "estimates.csv")
        assert list(est.columns[-4:]) == list(ESTIMAND_COLUMNS), name
        assert est[list(ESTIMAND_COLUMNS)].notna().all().all() and (est[list(ESTIMAND_COLUMNS)] != "").all().all(), name
    est = pd.read_csv(out / "headline" / "estimates.csv").set_index("quantity")
    assert list(est.reset_index().columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    w12, w16 = est.loc["nac - placebo mean MADRS at week 12"], est.loc["nac - placebo mean MADRS at week 16"]
    assert w12["population"] == "all randomised participants with a baseline MADRS score"
    assert w12["variable"] == "MADRS score at week 12 (end of treatment)" and w16["variable"] == "MADRS score at week 16 (off-treatment follow-up)"
    assert w12["intercurrent_events"].startswith("dropout and other missing visits: hypothetical strategy under missing at random")
    assert w16["intercurrent_events"].startswith("end of treatment (week 12): treatment policy") and "missing at random" in w16["intercurrent_events"]
    assert w12["summary"] == "difference in means (nac - placebo)"
    assert est.loc["placebo change from baseline at week 12", "summary"].startswith("mean change from baseline in the placebo arm")
    assert est.loc["baseline MADRS per doubling of il6", "intercurrent_events"] == "none: measured before randomisation"
    assert "per doubling of baseline crp" in est.loc["change in MADRS by week 12 per doubling of baseline crp", "summary"]
    report = (out / "report.html").read_text()
    assert "Estimand: population: all randomised participants with a baseline MADRS score; variable: MADRS score at week 16" in report
    assert "Estimands of these rows (ICH E9(R1))" in report


@pytest.mark.smoke
def test_sensitivity_writes_four_tables_and_a_report_section(fitted):
    """--sensitivity: the tables for the models that support them, MAR equal to the fit's own effect, the tipping
    point with what it found, responders at weeks 12 and 16, prior sensitivity; a note for the null model."""
    code, out = fitted
    assert code == 0
    for name in ("treatment", "headline"):
        tables = {t: pd.read_csv(out / name / f"{t}.csv") for t in SENSITIVITY_TABLES}
        sens, est = tables["sensitivity"], pd.read_csv(out / name / "estimates.csv")
        assert SENSITIVITY_COLUMNS <= set(sens.columns)
        assert list(sens["strategy"].unique()) == ["MAR", "J2R", "CR", "CIR", "delta=2", "delta=4", "delta=6"]
        for week in (12, 16):
            mar = sens[(sens["strategy"] == "MAR") & (sens["week"] == week)].iloc[0]
            row = est[(est["week"] == week) & est["quantity"].str.startswith("nac - placebo mean")].iloc[0]
            for col in ("mean", "sd", "hdi_3%", "hdi_97%", "p_below_0"):
                assert mar[col] == pytest.approx(row[col], abs=1e-9), (name, week, col)
        tip = tables["tipping_point"]
        assert {"delta", "mean", "p_below_0", "flipped", "tipping_delta", "tipping_message"} <= set(tip.columns)
        assert (tip["week"] == 12).all() and (out / name / "figures" / "tipping_point.png").is_file()
        assert list(dict.fromkeys(tip["delta_kind"])) == ["additive", "multiplicative"]  # delta points; a factor on the change
        for kind, rows in tip.groupby("delta_kind"):
            assert rows["tipping_message"].nunique() == 1
            found = rows.loc[rows["flipped"], "delta"]
            nearest = found.min() if kind == "additive" else found.max()  # the grid value nearest MAR that flips
            assert (rows["tipping_delta"].iloc[0] == nearest) if len(found) else rows["tipping_delta"].isna().all()
        resp = tables["responders"]
        assert set(resp["estimand"]) == {"MAR", "NRI"} and set(resp["week"]) == {12, 16} and set(resp["outcome"]) == {"response", "remission"}
        assert resp["estimand_text"].str.contains("remission \\(score <= 7\\)").any()  # the default --remission-cutoff
        prior = tables["prior_sensitivity"]
        assert {"effect", "prior_sensitivity", "likelihood_sensitivity", "prior_sensitive", "diagnosis"} <= set(prior.columns)
        assert "nac_effect at week 12" in set(prior["effect"])
    assert not (out / "null" / "sensitivity.csv").exists() and not (out / "null" / "tipping_point.csv").exists()
    assert (out / "null" / "responders.csv").is_file() and (out / "null" / "prior_sensitivity.csv").is_file()
    report = (out / "report.html").read_text()
    for name in ("null", "treatment", "headline"):
        assert f'id="sensitivity-{name}">Sensitivity and estimands' in report, name
    assert report.count('alt="treatment: tipping point"') == 1 and "<b>Tipping point</b>: " in report
    assert "No reference-based strategies, delta adjustment or tipping point for this model" in report  # null
    assert "rate, placebo" in report
    for name in ("null", "treatment", "headline"):  # each model's prior flag line, as its prior_sensitivity.csv says
        prior = pd.read_csv(out / name / "prior_sensitivity.csv")
        assert len(prior) and prior["prior_sensitivity"].notna().all(), (name, prior)
        start = report.index(f'id="sensitivity-{name}"')
        section = report[start:report.index("Convergence", start)]
        flagged = prior[prior["prior_sensitive"]]
        if len(flagged):
            assert "<b>Prior-sensitive</b>" in section and "No reported effect is prior-sensitive" not in section, name
            for r in flagged.itertuples(index=False):
                assert f"{r.effect} ({r.diagnosis}, prior sensitivity {r.prior_sensitivity:.3f})" in section, (name, r.effect)
        else:
            assert "No reported effect is prior-sensitive" in section and "<b>Prior-sensitive</b>" not in section, name
    run = json.loads((out / "run.json").read_text())["sensitivity"]
    assert run["deltas"] == "default" and run["ice"] is None and run["seed"] == 3
    assert run["models"]["treatment"]["tables"] == [f"{t}.csv" for t in SENSITIVITY_TABLES]
    # read back for the report by diagnose.py without --sensitivity: the same tables, the same notes
    back = saved_sensitivity(out, {n: deptrial.load_fit(out / n / "idata.nc", complete=False) for n in ("null", "treatment")})
    tip = pd.read_csv(out / "treatment" / "tipping_point.csv")
    assert back["treatment"].saved
    assert back["treatment"].tipping_message == "; ".join(tip.groupby("delta_kind", sort=False)["tipping_message"].first())
    pd.testing.assert_frame_equal(back["treatment"].tables["sensitivity"], pd.read_csv(out / "treatment" / "sensitivity.csv"))
    assert set(back["null"].tables) == {"responders", "prior_sensitivity"} and "no arm effect" in back["null"].notes["sensitivity"]


@pytest.mark.smoke
def test_diagnose_refuses_a_bad_ice_file_before_any_work(fitted, tmp_path, capsys):
    _, out = fitted
    bad = tmp_path / "ice.csv"
    bad.write_text("participant_id,week,strategy\nP0001,12,J2R\nP0002,5,J2R\nNOBODY,12,jump\n")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert diagnose.main([str(out), "--sensitivity", "--ice", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ice.csv, column 'week', line 3" in err and "ice.csv, column 'participant_id', line 4" in err and "Fix:" in err
    assert "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.smoke
def test_existing_output_is_not_overwritten(fitted, small_trial_dir, capsys):
    _, out = fitted
    before = (out / "headline" / "idata.nc").stat().st_mtime_ns
    code = fit.main(["--data", str(small_trial_dir), "--out", str(out), "--draws", "10"])
    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "headline" / "idata.nc").stat().st_mtime_ns == before


@pytest.mark.unit
def test_bad_data_exits_2_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.toml").write_text("[outcome]\nname = \"madrs\"\n")
    (tmp_path / "bad" / "participants.csv").write_text("participant_id,arm,site\nA,placebo,s\nB,nac,s\nC,placebo,s\nD,nac,s\n")
    (tmp_path / "bad" / "visits.csv").write_text("participant_id,week,madrs\nA,0,20\nB,0,75\nC,0,30\nD,0,31\n")
    code = fit.main(["--data", str(tmp_path / "bad"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "visits.csv" in err and "line 3" in err and "outside its valid range" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_a_bad_ice_file_exits_2_before_any_fit_and_writes_nothing(small_trial_dir, tmp_path, capsys, monkeypatch):
    """--ice FILE, or ice.csv in the dataset folder, is validated before the first fit; its options need --sensitivity."""
    monkeypatch.setattr(orchestrate, "run_models", lambda *a, **k: pytest.fail("a refused request must not reach the fits"))
    bad = tmp_path / "events.csv"
    bad.write_text("participant_id,week,strategy\nP0001,12,J2R\nP0002,12,j2r\n")
    out = tmp_path / "out"
    assert fit.main(["--data", str(small_trial_dir), "--model", "treatment", "--sensitivity", "--ice", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "events.csv, column 'strategy', line 3" in err and "write the strategy in capitals" in err and "Traceback" not in err
    assert not out.exists()
    trial = tmp_path / "trial"  # the dataset folder's own ice.csv is the default
    shutil.copytree(small_trial_dir, trial)
    (trial / "ice.csv").write_text("participant_id,week,strategy\nP0001,0,CR\n")
    assert fit.main(["--data", str(trial), "--model", "treatment", "--sensitivity", "--out", str(out)]) == 2
    assert "ice.csv, column 'week', line 2: week 0 is the baseline visit" in capsys.readouterr().err and not out.exists()
    assert fit.main(["--data", str(trial), "--model", "treatment", "--sensitivity", "--ice", str(tmp_path / "none.csv"), "--out", str(out)]) == 2
    assert "no file" in capsys.readouterr().err and not out.exists()
    assert fit.main(["--data", str(trial), "--ice", str(bad), "--deltas", "2,4", "--out", str(out)]) == 2
    assert "--ice and --deltas apply only with --sensitivity" in capsys.readouterr().err
    assert fit.main(["--sensitivity", "--deltas", "2,-1", "--out", str(out)]) == 2
    assert fit.main(["--sensitivity", "--tipping-threshold", "1.5", "--out", str(out)]) == 2
    assert not out.exists()


@pytest.mark.unit
def test_list_models_and_unknown_model(capsys, tmp_path):
    assert fit.main(["--list-models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[0] == "headline" and len(lines[0].split()) > 3
    assert fit.main(["--model", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_mmrm_through_fit_cli(small_trial_dir, tmp_path, capsys):
    """The MMRM's outcome is change from baseline, not the scores: fit.py fits and tabulates it, and ranks it beside
    a trajectory model on the post-baseline scores given the baseline (the same participants and visits)."""
    out = tmp_path / "mmrm"
    code = fit.main(["--data", str(small_trial_dir), "--model", "mmrm", "treatment", "--draws", "300", "--tune", "300", "--chains", "2",
                     "--prior-draws", "10", "--out", str(out), "--quiet", "--sensitivity"])
    assert code == 0
    for level in ("participant", "visit"):
        table = pd.read_csv(out / f"comparison_{level}.csv", index_col=0)
        assert set(table.index) == {"mmrm", "treatment"} and table["n_units"].nunique() == 1
    copy = tmp_path / "copy"  # the MMRM first in run.json: re-diagnosing reads it back and gives the same comparison
    shutil.copytree(out, copy)
    deptrial.rediagnose(copy)
    for level in ("participant", "visit"):
        assert (copy / f"comparison_{level}.csv").read_bytes() == (out / f"comparison_{level}.csv").read_bytes()
    assert (out / "mmrm" / "idata.nc").exists()
    est = pd.read_csv(out / "mmrm" / "estimates.csv")
    assert est["quantity"].str.contains("week 16").any()
    nac12 = est[(est["week"] == 12) & est["quantity"].str.startswith("nac - placebo")].iloc[0]
    assert nac12["variable"] == "MADRS change from baseline at week 12 (end of treatment)"
    assert nac12["summary"].startswith("difference in mean change from baseline (nac - placebo)")
    sens = pd.read_csv(out / "mmrm" / "sensitivity.csv")  # the MMRM's own difference is its MAR row
    assert sens.loc[(sens["strategy"] == "MAR") & (sens["week"] == 12), "mean"].iloc[0] == pytest.approx(nac12["mean"], abs=1e-9)
    for table in SENSITIVITY_TABLES:
        assert (out / "mmrm" / f"{table}.csv").is_file(), table
    assert 'id="sensitivity-mmrm"' in (out / "report.html").read_text()


@pytest.mark.slow
def test_parallel_fits_give_the_same_draws_as_fits_in_turn(small_trial_dir, tmp_path, capsys):
    common = ["--data", str(small_trial_dir), "--model", "null", "treatment", "--draws", "30", "--tune", "40", "--chains", "2",
              "--prior-draws", "10", "--seed", "11", "--quiet"]
    assert fit.main([*common, "--jobs", "2", "--out", str(tmp_path / "parallel")]) == 0
    assert fit.main([*common, "--jobs", "1", "--out", str(tmp_path / "serial")]) == 0
    for name in ("null", "treatment"):  # what each file stores; the rest is a function of it (tests/test_storage.py)
        a = deptrial.load_fit(tmp_path / "parallel" / name / "idata.nc", complete=False)
        b = deptrial.load_fit(tmp_path / "serial" / name / "idata.nc", complete=False)
        for group in ("posterior", "sample_stats", "prior", "prior_predictive"):
            for var in a[group].data_vars:
                assert (a[group][var].values == b[group][var].values).all(), (name, group, var)
    run = json.loads((tmp_path / "parallel" / "run.json").read_text())
    assert set(run["models"]) == {"null", "treatment"}
    assert "sensitivity" not in run  # without --sensitivity: none of its tables, nothing in the report
    for table in SENSITIVITY_TABLES:
        assert not list(tmp_path.rglob(f"{table}.csv")), table
    assert not list(tmp_path.rglob("tipping_point.png")) and "Sensitivity and estimands" not in (tmp_path / "serial" / "report.html").read_text()


@pytest.mark.unit
def test_jobs_must_be_positive(capsys, tmp_path):
    assert fit.main(["--jobs", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


@pytest.mark.smoke
def test_a_failure_writing_results_exits_3_and_writes_nothing(small_trial_dir, tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(orchestrate, "finish_fit", full_disk)
    out = tmp_path / "out"
    code = fit.main(["--data", str(small_trial_dir), "--model", "null", "--jobs", "1", "--draws", "20", "--tune", "20", "--chains", "2",
                     "--prior-draws", "5", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "saving or checking the fit of model 'null' failed" in err and "No space left" in err
    assert "advice" not in err and not out.exists()


@pytest.fixture(scope="module")
def single_site_trial_dir(tmp_path_factory):
    """One site, no biomarkers: the null model has no per-participant data at all."""
    from data import TrialParameters, simulate_trial

    sim = simulate_trial(TrialParameters(n_participants=40, seed=9, sites=("only",), site_weights=(1.0,)))
    sim.biomarkers = sim.biomarkers.iloc[0:0]
    return sim.write(tmp_path_factory.mktemp("single") / "trial")


def _participant_comparison(out, models):
    table = pd.read_csv(out / "comparison_participant.csv", keep_default_na=False)  # 'null' is a model name here
    assert set(table.iloc[:, 0]) == set(models)
    for name in models:  # every model scored on the participants by id, not 0, 1, 2...
        units = pd.read_csv(out / name / "loo_participant.csv").iloc[:, 0].astype(str)
        assert units.str.startswith("P").all(), (name, units.head())


@pytest.mark.smoke
def test_one_chain_on_a_single_site_trial_without_biomarkers_runs_through(single_site_trial_dir, tmp_path, capsys):
    out = tmp_path / "one_chain"
    code = fit.main(["--data", str(single_site_trial_dir), "--model", "null", "treatment", "--chains", "1", "--draws", "60",
                     "--tune", "60", "--prior-draws", "10", "--jobs", "1", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    _participant_comparison(out, ["null", "treatment"])
    assert "R-hat not available" in (out / "treatment" / "convergence.txt").read_text()
    report = (out / "report.html").read_text()
    assert "R-hat not available" in report and "Model comparison" in report


@pytest.mark.smoke
def test_too_few_draws_exit_2_before_sampling(single_site_trial_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(orchestrate, "run_models", lambda *a, **k: pytest.fail("refused settings must not reach the fits"))
    code = fit.main(["--data", str(single_site_trial_dir), "--model", "null", "--chains", "1", "--draws", "20", "--out", str(tmp_path / "o")])
    assert code == 2 and "too few" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_every_allowed_model_on_a_single_site_trial_without_biomarkers(single_site_trial_dir, tmp_path, capsys):
    """Every registered model the data allow is fitted and the visit-score ones are compared at both levels."""
    from data import load_dataset
    from models import REGISTRY, ModelDataError, build_design

    design = build_design(load_dataset(single_site_trial_dir))
    allowed = []
    for name, spec in REGISTRY.items():
        try:
            spec.require(design)
            allowed.append(name)
        except ModelDataError:
            pass
    assert {"null", "treatment", "treatment_curved", "mmrm"} <= set(allowed)
    out = tmp_path / "all"
    code = fit.main(["--data", str(single_site_trial_dir), "--model", *allowed, "--chains", "2", "--draws", "300", "--tune", "300",
                     "--prior-draws", "10", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    compared = [n for n in allowed if REGISTRY[n].compared]  # the MMRM too, on the integrated densities
    _participant_comparison(out, compared)
    assert set(pd.read_csv(out / "comparison_visit.csv", keep_default_na=False).iloc[:, 0]) == set(compared)
    for name in allowed:
        assert (out / name / "estimates.csv").exists()


@pytest.mark.slow
def test_comparison_is_reliable_without_refits_on_a_small_single_site_trial(tmp_path, capsys):
    """100 participants, one site, no biomarkers, 5 visits, 40% dropout: the main job's comparison has at most 1% of
    participants and of visits with Pareto k above 0.7 in every model, and no caution, without any refit."""
    from data import TrialParameters, simulate_trial

    sim = simulate_trial(TrialParameters(n_participants=100, seed=21, sites=("only",), site_weights=(1.0,),
                                         weeks=(0, 2, 4, 8, 12), treatment_end=8, dropout_by_last_week=0.4))
    sim.biomarkers = sim.biomarkers.iloc[0:0]
    folder = sim.write(tmp_path / "trial")
    out = tmp_path / "out"
    assert fit.main(["--data", str(folder), "--model", "null", "treatment", "--out", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "Caution" not in printed and "unreliable" not in printed, printed[-2000:]
    for name in ("null", "treatment"):
        for level in ("participant", "visit"):
            k = pd.read_csv(out / name / f"loo_{level}.csv")["pareto_k"]
            assert (k > 0.7).mean() <= 0.01, (name, level, (k > 0.7).sum())
