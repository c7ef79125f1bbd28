"""A MAP prior from past trials on the control arm's change at the end of treatment (fit.py --historical-control).

The checks: the models' prior density of the control change is the mixture's (against scipy, independent of PyMC's
NormalMixture); the new trial's control summary and the historical trial folders against a hand computation from the
CSV files; the refusals (exit 2, nothing written, before any fit); and the statistical check, a fit with the MAP prior
against importance reweighting of a fit without it: the posterior with prior pi_MAP is the posterior with the default
Normal prior reweighted by pi_MAP(c) / Normal(c), so the two must agree within Monte Carlo error whatever the sampler
or the fused kernel does (the smoke tier on a small trial, the slow tier on the bundled one with more draws).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import deptrial
import diagnose
import fit
from data import DEFAULT_DATASET, DOSE_DATASET, load_dataset
from data.errors import DatasetError
from data.historical import control_summary, read_historical_folders, read_historical_source
from inference.sampling import SamplerSettings
from maths.map_prior import NormalMixture
from models import build_design, get
from models.priors import CONTROL_CHANGE, mixture_prior

HIST = "study,n,mean,sd\nTrial A,102,-11.0,7.4\nTrial B,121,-12.5,7.9\nTrial C,84,-9.8,6.9\nTrial D,150,-13.0,8.1\nTrial E,95,-10.5,7.2\n"


@pytest.fixture
def hist_csv(tmp_path):
    path = tmp_path / "historical.csv"
    path.write_text(HIST)
    return path


# ---------------------------------------------------------------- the prior in the models


@pytest.mark.unit
@pytest.mark.parametrize("model", ["mmrm", "treatment"])
def test_prior_density_of_the_control_change_is_the_mixture(small_trial, model):
    """log prior of the control-change vector: the mixture at the end of treatment, the default Normal elsewhere
    (scipy, not PyMC's NormalMixture); the other visits' and phases' priors are untouched."""
    design = build_design(small_trial)
    control = mixture_prior([0.7, 0.3], [-11.0, -6.0], [1.2, 7.0], "MAP")
    built = get(model).build(design, {CONTROL_CHANGE: control})
    name = "visit_mean" if model == "mmrm" else "time_change"
    var = built.model[name]
    n = int(var.shape.eval()[0])
    index = list(built.model.coords["visit"]).index(design.meta.treatment_end) if model == "mmrm" else 0
    value = built.model.rvs_to_values[var]
    fn = built.model.compile_fn(built.model.logp(vars=[var], sum=False)[0], inputs=[value])

    def logp(x):
        return fn({value.name: x})
    base = get(model).default_priors(design)[name]
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.normal(-8.0, 6.0, size=n)
        got = np.asarray(logp(x))
        want = stats.norm(base.params["mu"], base.params["sigma"]).logpdf(x)
        want[index] = np.log(0.7 * stats.norm(-11.0, 1.2).pdf(x[index]) + 0.3 * stats.norm(-6.0, 7.0).pdf(x[index]))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # PyMC keeps some constants in float32
    assert built.priors[CONTROL_CHANGE] is control
    # without it the model is the default one
    assert CONTROL_CHANGE not in get(model).build(design).priors


# ---------------------------------------------------------------- past trials


@pytest.mark.unit
def test_control_summary_is_the_observed_change_of_the_control_arm():
    """Against a hand computation from the bundled trial's CSV files."""
    visits = pd.read_csv(DEFAULT_DATASET / "visits.csv")
    people = pd.read_csv(DEFAULT_DATASET / "participants.csv")
    wide = visits.pivot_table(index="participant_id", columns="week", values="madrs")
    change = (wide[12] - wide[0]).dropna()
    control = change[change.index.isin(people.loc[people["arm"] == "placebo", "participant_id"])]
    got = control_summary(load_dataset(DEFAULT_DATASET))
    assert (got.arm, got.week, got.n) == ("placebo", 12, len(control))
    assert got.mean == pytest.approx(control.mean(), abs=1e-12) and got.sd == pytest.approx(control.std(ddof=1), abs=1e-12)
    assert got.se == pytest.approx(control.std(ddof=1) / np.sqrt(len(control)))


@pytest.mark.unit
def test_historical_trial_folders_and_their_refusals(tmp_path):
    both = read_historical_folders([DEFAULT_DATASET, DOSE_DATASET], scale=(0, 60))
    assert len(both) == 2 and both.mean[0] == pytest.approx(control_summary(load_dataset(DEFAULT_DATASET)).mean)
    assert read_historical_source([DEFAULT_DATASET, DOSE_DATASET]).study == both.study
    with pytest.raises(DatasetError, match="another scale|scored 0-60, the new trial's 0-52"):
        read_historical_folders([DEFAULT_DATASET, DOSE_DATASET], scale=(0, 52))
    with pytest.raises(DatasetError, match="at least 2"):
        read_historical_folders([DEFAULT_DATASET])
    with pytest.raises(DatasetError, match="more than once"):
        read_historical_folders([DEFAULT_DATASET, DEFAULT_DATASET])
    csv = tmp_path / "h.csv"
    csv.write_text(HIST)
    with pytest.raises(DatasetError, match="not a trial folder"):
        read_historical_source([DEFAULT_DATASET, csv])


@pytest.mark.unit
def test_fit_py_refuses_bad_historical_input_before_any_fit(small_trial_dir, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("study,n,mean,sd\nA,1,-10,7\nB,80,-11,0\n")
    out = tmp_path / "r"
    code = fit.main(["--data", str(small_trial_dir), "--model", "mmrm", "--historical-control", str(bad), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "bad.csv" in err and "sd must be positive" in err and "n must be at least 2" in err
    assert not out.exists()
    good = tmp_path / "h.csv"
    good.write_text(HIST)
    code = fit.main(["--data", str(small_trial_dir), "--model", "mmrm", "mediation", "--historical-control", str(good), "--out", str(out)])
    assert code == 2 and "mediation has none" in capsys.readouterr().err and not out.exists()
    code = fit.main(["--data", str(small_trial_dir), "--model", "mmrm", "--historical-control", str(good), "--map-robust-weight", "1",
                     "--out", str(out)])
    assert code == 2 and not out.exists()


# ---------------------------------------------------------------- against importance reweighting


def reweighted(plain, prior: NormalMixture, default, week: int, names: list[tuple[str, dict]]):
    """Posterior means under the MAP prior from draws under the default Normal prior: weights pi_MAP(c) / Normal(c) at
    the control change c; returns the means and their Monte Carlo SE (with the effective sample size of the weights)."""
    c = plain.posterior["placebo_change"].sel(week=week).values.ravel()
    logw = prior.logpdf(c) - stats.norm(default.params["mu"], default.params["sigma"]).logpdf(c)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    ess = 1.0 / (w**2).sum()
    out = {}
    for name, sel in names:
        x = plain.posterior[name].sel(**sel).values.ravel()
        m = float((w * x).sum())
        out[(name, tuple(sel.items()))] = (m, float(np.sqrt((w * (x - m) ** 2).sum() / ess)))
    return out, ess


def check_against_reweighting(data, model, hist, tmp_path, settings, tolerance: float):
    """Fit `model` with and without the MAP prior; the MAP fit's posterior means of the control change and each arm's
    effect at the end of treatment are within `tolerance` MCSE of the reweighted plain fit's."""
    plain = deptrial.fit_trial(data, [model], settings, out=tmp_path / "plain")
    borrowed = deptrial.fit_trial(data, [model], settings, out=tmp_path / "map", historical_control=hist)
    record = json.loads((tmp_path / "map" / "map_prior.json").read_text())
    prior = NormalMixture.from_dict(record["robust_mixture"])
    design = build_design(load_dataset(data))
    week = design.meta.treatment_end
    default = get(model).default_priors(design)["visit_mean" if model == "mmrm" else "time_change"]
    names = [("placebo_change", {"week": week})] + [("nac_effect", {"week": week, "active_arm": a}) for a in design.active_arms]
    expected, ess = reweighted(plain.fits[model].idata, prior, default, week, names)
    assert ess > 200
    got = borrowed.fits[model].idata.posterior
    worst = 0.0
    for (name, sel), (m, mcse) in expected.items():
        x = got[name].sel(**dict(sel)).values.ravel()
        z = abs(float(x.mean()) - m) / np.hypot(mcse, x.std() / np.sqrt(len(x) / 2))  # autocorrelation: ESS ~ draws / 2
        worst = max(worst, z)
        assert z < tolerance, (name, sel, float(x.mean()), m)
    return borrowed, record, worst


@pytest.mark.smoke
def test_map_fit_agrees_with_reweighting_and_writes_its_record(small_trial_dir, hist_csv, tmp_path):
    """A tiny MMRM fit: with the MAP prior its posterior agrees with the reweighted plain fit; map_prior.json, run.json
    and the report hold the prior, ESS, conflict check and posteriors; diagnose.py keeps the section."""
    settings = SamplerSettings(draws=400, tune=300, chains=2, seed=5, prior_draws=20)
    borrowed, record, _ = check_against_reweighting(small_trial_dir, "mmrm", hist_csv, tmp_path, settings, tolerance=4.0)
    assert set(record) >= {"mixture", "robust_mixture", "ess", "conflict", "new_trial", "models", "settings", "historical"}
    assert record["settings"]["robust_weight"] == 0.2 and 0 < record["conflict"]["p_value"] <= 1
    post = record["models"]["mmrm"]
    assert post["sd"] < post["prior_sd"]
    run = json.loads((tmp_path / "map" / "run.json").read_text())
    assert run["historical_control"]["trials"] == 5
    html = (tmp_path / "map" / "report.html").read_text()
    assert "Borrowing the control arm from past trials" in html and "Effective sample size of the prior" in html
    assert (tmp_path / "map" / "summary" / "map_prior.png").stat().st_size > 1000
    assert diagnose.main([str(tmp_path / "map")]) == 0
    assert "Borrowing the control arm from past trials" in (tmp_path / "map" / "report.html").read_text()
    assert "Borrowing" not in (tmp_path / "plain" / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mmrm"])
def test_map_fit_agrees_with_reweighting_on_the_bundled_trial(model, tmp_path):
    """The bundled trial, 4 x 1,500 draws: the MMRM (visit_mean at week 12) on the fused kernel against the reweighted
    fit without the prior; a past-trial table in conflict (control means about 4 points better than this trial's) so
    that the prior moves the posterior. (The trajectory kernel's mixture term is checked against PyTensor in
    tests/test_fused.py; `treatment` measured 1.97 MCSE here at worst.)"""
    hist = tmp_path / "conflict.csv"
    hist.write_text("study,n,mean,sd\nA,110,-15.0,7.4\nB,121,-16.1,7.9\nC,96,-14.6,6.9\nD,150,-15.8,8.1\n")
    settings = SamplerSettings(draws=1500, tune=1000, chains=4, seed=9)
    borrowed, record, worst = check_against_reweighting(DEFAULT_DATASET, model, hist, tmp_path, settings, tolerance=3.5)
    assert record["conflict"]["p_value"] < 0.2  # the new control arm sits in the tail of the MAP prior
    assert record["conflict"]["vague_weight_posterior"] > record["conflict"]["vague_weight_prior"]
    assert int(borrowed.fits[model].idata.sample_stats["diverging"].sum()) == 0
    print(f"{model}: worst |MAP fit - reweighted| / MCSE = {worst:.2f}")


@pytest.mark.unit
def test_historical_folders_give_the_same_prior_as_their_csv(tmp_path):
    """Two folders or the CSV of their control summaries: the same MAP prior (same seed)."""
    from diagnostics.borrowing import prepare

    past = read_historical_folders([DEFAULT_DATASET, DOSE_DATASET], scale=(0, 60))
    csv = tmp_path / "h.csv"
    pd.DataFrame({"study": past.study, "n": past.n, "mean": past.mean, "sd": past.sd}).to_csv(csv, index=False)
    ds = load_dataset(DEFAULT_DATASET)
    a = prepare(past, ds, ["mmrm"], seed=3)
    b = prepare(read_historical_source(csv), ds, ["mmrm"], seed=3)
    np.testing.assert_allclose(a.prior.robust.means, b.prior.robust.means, rtol=1e-12)
    assert a.model_prior.dist == "NormalMixture" and a.record()["new_trial"]["n_observed"] == a.control.n
    shutil.rmtree(tmp_path, ignore_errors=True)
