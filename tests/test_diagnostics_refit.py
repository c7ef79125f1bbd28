"""Leave-out refits on a real (tiny) fit: exact leave-one-participant-out agrees with PSIS where PSIS is
reliable, and grouped K-fold runs end to end. A cheap pooled model keeps each refit to seconds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pymc as pm
import pytest
import xarray as xr

from data import load_dataset
from diagnostics import loo as dl
from inference.sampling import SamplerSettings, sample_posterior
from models import BuiltModel, build_design, get

SETTINGS = SamplerSettings(draws=600, tune=300, chains=2, cores=1, seed=11)


def pooled(design) -> BuiltModel:
    """y ~ Normal(a + b t1 + c t2, s): no participant effects, so each participant has little influence."""
    with pm.Model(coords={"obs": np.arange(len(design.y))}) as model:
        t1 = pm.Data("t1", design.t1, dims="obs")
        t2 = pm.Data("t2", design.t2, dims="obs")
        pm.Data("obs_participant", design.obs_participant, dims="obs")
        a = pm.Normal("a", 28, 10)
        b = pm.Normal("b", -10, 10)
        c = pm.Normal("c", 0, 10)
        s = pm.HalfNormal("s", 10)
        pm.Normal("y", a + b * t1 + c * t2, s, observed=design.y, dims="obs")
    return BuiltModel("pooled", model, design, {}, ("y",))


@pytest.fixture(scope="module")
def design(small_trial):
    return build_design(small_trial)


@pytest.fixture(scope="module")
def full_fit(design):
    idata, _ = sample_posterior(pooled(design), SETTINGS, quiet=True)
    with pooled(design).model:
        pm.compute_log_likelihood(idata, extend_inferencedata=True, progressbar=False)
    idata.add_groups(constant_data=xr.Dataset({"obs_participant": ("obs", design.obs_participant)}, coords={"participant": design.participants}))
    return idata


@pytest.mark.slow
def test_exact_refit_agrees_with_psis_when_k_is_small(design, full_fit):
    psis = dl.loo_participants(full_fit)
    assert psis.reliable and np.nanmax(psis.pareto_k) < dl.PARETO_K_MAX
    worst = int(np.argmin(psis.elpd_i))  # the worst-predicted participant: the most influential one
    exact = dl.heldout_elpd(design, pooled, [np.nonzero(design.obs_participant == worst)[0]], SETTINGS)
    assert exact[0] == pytest.approx(psis.elpd_i[worst], abs=0.3)  # Monte Carlo error of both estimates
    assert exact[0] < np.median(psis.elpd_i) - 1  # far from a typical participant, as PSIS says


@pytest.mark.slow
def test_exact_refits_for_several_participants(design, full_fit):
    psis = dl.loo_participants(full_fit)
    picks = [int(np.argmax(psis.elpd_i)), 5, 17]
    exact = dl.heldout_elpd(design, pooled, [np.nonzero(design.obs_participant == p)[0] for p in picks], SETTINGS)
    np.testing.assert_allclose(exact, psis.elpd_i[picks], atol=0.3)


@pytest.mark.slow
def test_grouped_kfold_close_to_psis_for_a_pooled_model(design, full_fit):
    psis = dl.loo_participants(full_fit)
    kf = dl.grouped_kfold(design, pooled, SETTINGS, k=4)
    assert set(kf.method) == {"kfold"} and np.isfinite(kf.elpd_i).all()
    assert list(kf.units) == list(psis.units)
    # each refit sees 3/4 of the participants; for a pooled model with 60 participants that barely matters
    assert abs(kf.elpd - psis.elpd) < 0.01 * abs(psis.elpd)
    assert np.corrcoef(kf.elpd_i, psis.elpd_i)[0, 1] > 0.99 and np.abs(kf.elpd_i - psis.elpd_i).max() < 3


@pytest.mark.slow
def test_visit_level_kfold_holds_out_visits_not_participants(design, full_fit):
    psis = dl.loo_visits(full_fit)
    kf = dl.grouped_kfold(design, pooled, SETTINGS, k=3, level="visit")
    assert kf.level == "visit" and len(kf.elpd_i) == len(design.y) and np.isfinite(kf.elpd_i).all()
    assert abs(kf.elpd - psis.elpd) < 0.01 * abs(psis.elpd)


@pytest.mark.slow
def test_diagnose_cli_refits_saved_fits(small_trial_dir, tmp_path, capsys):
    import diagnose
    import fit

    # one implausible score (the scale's top at one week-8 visit) leaves a participant whose PSIS estimate is unreliable
    data = tmp_path / "trial"
    shutil.copytree(small_trial_dir, data)
    visits = pd.read_csv(data / "visits.csv")
    visits.loc[visits.index[visits.week == 8][0], "madrs"] = 60
    visits.to_csv(data / "visits.csv", index=False)
    out = tmp_path / "out"
    assert fit.main(["--data", str(data), "--model", "treatment", "--draws", "300", "--tune", "300", "--chains", "2", "--prior-draws", "10", "--kfold", "0", "--out", str(out), "--quiet"]) == 0
    assert "--kfold" in (out / "comparison.txt").read_text() and not pd.read_csv(out / "comparison_participant.csv")["reliable"].all()
    # the refits use the priors a fit was made with (recorded in its provenance), not the defaults
    from deptrial.orchestrate import refit_context
    from diagnostics.saved import load_run
    from models.priors import to_json

    idatas, _ = load_run(out)
    recorded = json.loads(to_json(get("treatment").default_priors(build_design(load_dataset(data)))))
    recorded["nac_change"]["params"]["sigma"] = 1.234
    idatas["treatment"].posterior.attrs["priors"] = json.dumps(recorded)
    refit_design, builders, _ = refit_context(idatas)
    rebuilt = json.loads(to_json(builders["treatment"](refit_design).priors))
    assert rebuilt["nac_change"]["params"]["sigma"] == 1.234 and rebuilt == {k: recorded[k] for k in rebuilt}
    capsys.readouterr()
    assert diagnose.main([str(out), "--kfold", "2", "--quiet"]) == 0
    table = pd.read_csv(out / "treatment" / "loo_participant.csv")
    assert set(table["method"]) == {"kfold"} and np.isfinite(table["elpd_i"]).all()
    assert pd.read_csv(out / "comparison_participant.csv")["reliable"].all()
