"""Agreement of the Bayesian `treatment` model with statsmodels' REML linear mixed model (the frequentist
standard), on the default dataset and a simulated trial; and the REML comparator's own recovery of the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data import TrialParameters, load_dataset
from inference.sampling import SamplerSettings, sample_all
from models import get
from models.design import build_design
from validation.agreement import SD_RATIO_RANGE, TOLERANCE_SE, compare, reml_nac_effect, run_agreement, weak_priors
from validation.designs import design_of

DEFAULT = Path(__file__).resolve().parent.parent / "data" / "default"


@pytest.fixture(scope="module")
def default_design():
    return build_design(load_dataset(DEFAULT))


@pytest.fixture(scope="module")
def simulated():
    return design_of(TrialParameters(seed=4242))


@pytest.mark.unit
def test_reml_recovers_the_simulated_nac_effect(simulated):
    design, truth = simulated
    reml = reml_nac_effect(design).set_index("week")
    for w in (12, 16):
        z = (reml.loc[w, "reml_estimate"] - truth["nac_effect_by_week"][str(w)]) / reml.loc[w, "reml_se"]
        assert abs(z) < 3.3, (w, reml)
        assert 0.5 < reml.loc[w, "reml_se"] < 2.0  # a 252-participant trial: SE about 1 MADRS point


@pytest.mark.unit
def test_compare_flags_a_posterior_off_by_half_a_standard_error():
    import arviz as az

    rng = np.random.default_rng(1)
    reml = pd.DataFrame({"arm": ["nac"], "week": [16], "reml_estimate": [-3.0], "reml_se": [1.0]})
    for shift, ok in ((0.0, True), (0.5, False)):
        draws = rng.normal(-3.0 + shift, 1.0, size=(2, 2000))
        idata = az.from_dict(posterior={"nac_effect": draws[..., None, None]}, coords={"active_arm": ["nac"], "week": [16]},
                             dims={"nac_effect": ["active_arm", "week"]})
        assert bool(compare(idata, reml)["agrees"].iloc[0]) is ok


@pytest.mark.smoke
def test_fast_path_posterior_agrees_with_reml_on_a_simulated_trial(simulated):
    """The small version: the shipped fit path of 'treatment' (participant effects integrated out, fused
    log density) under the check's weak priors, on one simulated trial, against REML."""
    design, _ = simulated
    built = get("treatment").build(design, priors=weak_priors(design))
    idata, _ = sample_all(built, SamplerSettings(draws=800, tune=500, chains=2, seed=5, prior_draws=10), quiet=True)
    table = compare(idata, reml_nac_effect(design))
    assert len(table) == 2 and int(idata.sample_stats["diverging"].sum()) == 0
    assert (table["diff_in_se"].abs() <= TOLERANCE_SE).all(), table
    assert table["sd_ratio"].between(*SD_RATIO_RANGE).all(), table


@pytest.mark.slow
def test_posterior_mean_agrees_with_reml_under_weak_priors(default_design, simulated):
    table, info = run_agreement([("default", default_design), ("simulated", simulated[0])], seed=5, draws=600, tune=400, cores=1)
    assert len(table) == 4  # two datasets x weeks 12 and 16
    assert (table["divergences"] == 0).all()
    assert (table["diff_in_se"].abs() <= TOLERANCE_SE).all(), table
    assert table["sd_ratio"].between(*SD_RATIO_RANGE).all(), table


@pytest.mark.smoke
def test_integrated_kfold_scores_the_same_participants_as_psis(small_trial):
    """The default tier's version of the K-fold check: 2 folds, few draws, one model: same units, elpd close."""
    from validation.loo_kfold import run_loo_kfold

    design = build_design(small_trial)
    settings = SamplerSettings(draws=100, tune=150, chains=2, seed=3, prior_draws=5)
    models, pairs = run_loo_kfold([("small", design, ["treatment"])], settings, k=2, log=lambda _: None)
    row = models.iloc[0]
    assert row["share_k_above_0.7"] <= 0.05
    # 2-fold trains on half the participants: pessimistic, but within a few SE of PSIS on the same units
    assert row["kfold_elpd"] < row["psis_elpd"] + 2 and row["psis_elpd"] - row["kfold_elpd"] < 3 * row["psis_se"]
    assert pairs.empty


@pytest.mark.slow
def test_integrated_psis_differences_agree_with_grouped_kfold():
    """A simulated single-site trial: the null - treatment elpd difference by PSIS lies within the SE of the
    grouped 10-fold difference, on the integrated densities."""
    from validation.loo_kfold import run_loo_kfold, single_site_trial

    settings = SamplerSettings(draws=1000, tune=1000, chains=4, seed=8)
    _, pairs = run_loo_kfold([("single site", single_site_trial(31), ["null", "treatment"])], settings, k=10, log=lambda _: None)
    assert pairs["agrees"].all(), pairs
