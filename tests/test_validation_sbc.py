"""Simulation-based calibration: the rank statistics, the data swap, and a small SBC on the fused path that must
pass for the right model and fail for a model whose prior is mis-scaled tenfold (the full run: python -m validation.run;
the fused path and Dask: tests/test_validation_fused.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import registry
from validation.designs import sbc_design
from validation.sbc import N_RANK_DRAWS, bin_counts, default_bins, identifiable, ranks_of, run_sbc, uniformity
from validation.swap import observed_data_name, with_shared_observations

SMALL_REPS = 20
PARAMS = ["nac_change", "time_change", "residual_sd", "participant_sd", "intercept"]


def _ranks_frame(ranks, parameter="theta"):
    n = len(ranks)
    return pd.DataFrame({"replicate": np.arange(n), "parameter": parameter, "rank": ranks, "true": 0.0,
                         "post_mean": 0.0, "post_sd": 1.0, "ess_bulk": 500.0, "divergences": 0})


@pytest.mark.unit
def test_rank_counts_draws_below_truth():
    draws = np.arange(1000.0).reshape(2, 500)
    assert ranks_of(-1.0, draws) == 0
    assert ranks_of(2000.0, draws) == N_RANK_DRAWS
    assert ranks_of(499.5, draws) in (49, 50)


@pytest.mark.unit
def test_uniformity_accepts_uniform_and_rejects_u_shaped_ranks():
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, N_RANK_DRAWS + 1, 200)
    u_shaped = np.where(rng.random(200) < 0.5, rng.integers(0, 10, 200), rng.integers(90, 100, 200))
    good = uniformity(_ranks_frame(uniform)).iloc[0]
    assert good["p_value"] > 0.01 and good["p_extreme"] > 0.01 and not good["flagged"]
    # a few truths outside every posterior draw: invisible to 4 coarse bins, caught by the extreme-rank test
    outside = np.concatenate([[0, 0, 99, 99, 0], rng.integers(1, 99, 15)])
    assert uniformity(_ranks_frame(outside))["p_extreme"].iloc[0] < 1e-3
    bad = uniformity(_ranks_frame(u_shaped)).iloc[0]
    assert bad["p_value"] < 1e-6 and bad["flagged"]
    assert default_bins(20) == 4 and default_bins(100) == 10
    assert bin_counts(np.array([0, 24, 25, 99]), N_RANK_DRAWS, 4).tolist() == [2, 1, 0, 1]


@pytest.mark.unit
def test_identifiable_drops_constant_and_mirrored_elements():
    a = np.array([0.1, 0.5, -0.2])
    diag = np.array([1.0, 1.0 - 2.2e-16, 1.0 + 4.4e-16])  # an LKJ diagonal off a Cholesky product
    kept = identifiable({"corr[1,1]": diag, "corr[1,2]": a, "corr[2,1]": a + 1e-17, "sd": a + 1})
    assert list(kept) == ["corr[1,2]", "sd"]


@pytest.fixture(scope="module")
def design():
    return sbc_design(n_participants=40, seed=5)


@pytest.mark.unit
def test_shared_observations_leave_the_log_density_unchanged(design):
    model = registry.get("treatment").build(design).model
    shared = with_shared_observations(model)
    point = model.initial_point(0)
    assert np.isclose(model.compile_logp()(point), shared.compile_logp()(point))
    names = {v.name for v in shared.data_vars} | {v.name for v in shared.observed_RVs}
    assert "y" in names
    # the observed values are now a shared variable that can be replaced
    value = shared.rvs_to_values[shared["y"]]
    assert value.name == observed_data_name("y")
    value.set_value(np.asarray(value.get_value()) + 1.0)
    assert not np.isclose(model.compile_logp()(point), shared.compile_logp()(point))


@pytest.mark.slow
def test_small_sbc_is_calibrated(design):
    res = run_sbc("treatment", "treatment", design, PARAMS, n_reps=SMALL_REPS, seed=3, draws=200, tune=200, cores=1)
    uni = res.uniformity
    print(uni.to_string())
    assert len(res.ranks["replicate"].unique()) == SMALL_REPS
    assert set(uni["parameter"]) >= {"nac_change[nac,treatment]", "nac_change[nac,followup]", "residual_sd"}
    # Bonferroni over the ranked parameters at 1%: no parameter may look non-uniform
    assert (uni["p_value"] > 0.01 / len(uni)).all(), uni
    assert (uni["p_extreme"] > 0.01 / len(uni)).all(), uni
    assert (uni["mean_z"].abs() < 1.0).all(), uni


@pytest.mark.slow
def test_small_sbc_fails_when_the_prior_is_mis_scaled_tenfold(design):
    """Data simulated with a NAC prior 10x wider than the fitted model's: the fitted prior is 10x too narrow."""
    res = run_sbc("treatment (mis-scaled prior)", "treatment", design, PARAMS, n_reps=SMALL_REPS, seed=3, draws=200, tune=200, cores=1,
                  sim_priors={"nac_change": {"params": {"sigma": 60.0}}})
    uni = res.uniformity.set_index("parameter")
    print(uni.to_string())
    for name in ("nac_change[nac,treatment]", "nac_change[nac,followup]"):
        # chi-square on 4 bins of 20 replicates has little power here; the extreme-rank test has plenty
        assert uni.loc[name, "flagged"], uni
        assert uni.loc[name, "p_extreme"] < 1e-6, uni
        assert uni.loc[name, "extreme_rank_share"] >= 0.4, uni  # true values beyond all posterior draws (2% if calibrated)
        assert uni.loc[name, "sd_z"] > 3.0, uni  # posterior z-scores of the truth far wider than N(0, 1)
