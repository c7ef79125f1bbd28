"""The work after sampling, made cheaper without changing a number: elementwise sums and products of three or more
tensors evaluated as binary numpy operations in the graphs vectorised over draws (inference.marginal), one BLAS
thread for the steps after sampling (inference.sampling.one_blas_thread), PSIS-LOO read a block of units at a time
(equal to the whole-array computation bit for bit, and to az.loo), the LOO-PIT summed in the same pass (az.loo_pit's),
the posterior predictive checks read from observation-major replicates (the same tables to the last bit), and the
saved fit written in one session of the file (read back identical). Where a decision changes a number: the fast
path's verdict judges the population parameters (and the sampled missing biomarkers), and r_eff is the population
parameters' ESS for the mean."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytensor
import pytensor.scalar.basic as ps
import pytensor.tensor as pt
import pytest
from pytensor.tensor.elemwise import Elemwise
from threadpoolctl import threadpool_info

from diagnostics.plots import _steps_post
from inference.marginal import python_mode, vectorised_mode
from inference.sampling import AFTER_FIT_BLAS_THREADS, one_blas_thread

pytestmark = pytest.mark.unit


def wide_elementwise(fn) -> list:
    return [n for n in fn.maker.fgraph.toposort()
            if isinstance(n.op, Elemwise) and isinstance(n.op.scalar_op, (ps.Add, ps.Mul)) and len(n.inputs) > 2]


def test_binary_chains_give_the_numbers_of_pythons_sum_and_prod():
    a, b, c, d = (pt.matrix(n) for n in "abcd")
    out = [a + b + c + d, a * b * c, pt.exp(a) + b * c * d + a]  # rewritten into n-ary sums and products
    plain = pytensor.function([a, b, c, d], out, mode=python_mode())
    chained = pytensor.function([a, b, c, d], out, mode=vectorised_mode())
    assert wide_elementwise(plain) and not wide_elementwise(chained)  # the case is reached, and rewritten
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(50, 40)) * 10.0 ** rng.integers(-8, 8, size=(50, 40)) for _ in range(4)]
    for got, expected in zip(chained(*values), plain(*values)):
        np.testing.assert_array_equal(got, expected)  # bit for bit


def test_one_blas_thread_limits_blas_inside_only():
    def threads():
        return {d["filepath"]: d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}

    before = threads()
    inside = one_blas_thread(threads)()
    assert inside and all(n == AFTER_FIT_BLAS_THREADS for n in inside.values())
    assert threads() == before


def test_visit_figure_steps_are_matplotlibs():
    x, h = np.array([0.0, 1.0, 2.5, 3.0]), np.array([[1.0, 3.0, 2.0, 0.5], [0.0, 1.0, 1.0, 4.0]])
    fig, ax = plt.subplots()
    for row, vertices in zip(h, _steps_post(x, h)):
        (line,) = ax.step(x, row, where="post")
        np.testing.assert_array_equal(vertices, line.get_path().vertices)
    plt.close(fig)


# ---------------------------------------------------------------- what the verdict judges, r_eff, PSIS in blocks

def _stats(rng, chains=4, draws=400):
    shape = (chains, draws)
    return {"energy": rng.normal(size=shape), "diverging": np.zeros(shape, dtype=bool), "depth": np.full(shape, 3),
            "maxdepth_reached": np.zeros(shape, dtype=bool)}


def _fit(rng, path: str, stuck: str | None = None, chains=4, draws=400, participants=30):
    """A fit's posterior: population parameters, a derived quantity and participant effects; `stuck` names a variable
    whose last chain sits far from the others (its R-hat fails)."""
    import arviz as az

    post = {"intercept": rng.normal(26, 0.3, (chains, draws)), "residual_sd": np.exp(rng.normal(1.1, 0.02, (chains, draws))),
            "participant_effects": rng.normal(0, 4, (chains, draws, participants, 2))}
    post["placebo_change"] = post["intercept"][..., None] * np.array([0.0, -0.2, -0.4])  # derived: the estimates read it
    if stuck is not None:
        post[stuck][-1] = post[stuck][-1] + 10 * post[stuck].std()
    idata = az.from_dict(posterior=post, sample_stats=_stats(rng, chains, draws),
                         dims={"participant_effects": ["participant", "participant_effect"], "placebo_change": ["week"]})
    idata.posterior = idata.posterior.assign_attrs(fit_path=path)
    return idata


def test_fast_path_verdict_judges_the_population_parameters_and_the_plain_path_every_one():
    from diagnostics import convergence as cv

    rng = np.random.default_rng(1)
    fast = _fit(rng, "marginal", stuck="participant_effects")
    check = cv.verdict(fast)
    assert check.ok and check.population_only  # the participant effects are exact draws given each population draw
    assert not any(str(i).startswith("participant_effects") for i in check.stats.index)
    assert "placebo_change[2]" in check.table.index and f"{len(check.stats)} scalars" in check.scope
    expected = cv.convergence_stats(fast, var_names=["intercept", "residual_sd", "placebo_change"])
    pd.testing.assert_frame_equal(check.stats, expected)  # the same statistics as before, of those variables
    plain = fast.copy()
    plain.posterior = plain.posterior.assign_attrs(fit_path="plain")
    judged = cv.verdict(plain)
    assert not judged.ok and "rhat" in judged.flags and not judged.population_only  # sampled: judged
    assert any(str(i).startswith("participant_effects") for i in judged.table.index[judged.table["r_hat"] > cv.RHAT_MAX])
    bad = cv.verdict(_fit(rng, "marginal", stuck="intercept"))  # a population parameter that does not mix fails on both paths
    assert not bad.ok and "intercept" in bad.table.index[bad.table["r_hat"] > cv.RHAT_MAX]
    assert "judged: the population parameters" in check.text() and "judged: every parameter" in judged.text()


def test_fast_path_verdict_judges_the_missing_biomarker_values_the_sampler_drew():
    """Participants with a censored marker keep their missing markers latent on the fast path (sampled: judged); the
    others' are drawn after sampling with the participant effects (not judged)."""
    import xarray as xr

    from data import DEFAULT_DATASET, load_dataset
    from diagnostics import convergence as cv
    from models import build_design
    from models.marker_block import latent_missing

    ds = load_dataset(DEFAULT_DATASET)
    values, below = ds["marker_value"].values.copy(), ds["below_lod"].values
    censored = below[:, :, 0] & ~np.isnan(values[:, :, 0])
    for i in np.flatnonzero(censored.any(axis=1))[:3]:  # a missing marker beside a censored one: stays latent
        values[i, np.flatnonzero(~censored[i] & ~np.isnan(values[i, :, 0]))[0], 0] = np.nan
    design = build_design(ds.assign(marker_value=(ds["marker_value"].dims, values)))
    md = design.baseline
    latent = latent_missing(md)
    assert 0 < len(latent) < md.n_missing
    rng = np.random.default_rng(2)
    idata = _fit(rng, "marginal")
    idata.posterior["marker_missing_std"] = xr.DataArray(rng.normal(size=(4, 400, md.n_missing)), dims=("chain", "draw", "marker_missing_value"),
                                                        coords={"marker_missing_value": np.arange(md.n_missing)})
    judged = [i for i in cv.verdict(idata, design=design).stats.index if i.startswith("marker_missing_std")]
    assert judged == [f"marker_missing_std[{j}]" for j in latent]


def test_relative_efficiency_is_the_population_parameters_ess_for_the_mean():
    import arviz as az

    from diagnostics import convergence as cv
    from diagnostics import loo as dl

    rng = np.random.default_rng(3)
    idata = _fit(rng, "marginal")
    ar = np.zeros((4, 400))
    for t in range(1, 400):  # an autocorrelated participant effect: az.loo's r_eff (every scalar) would count it
        ar[:, t] = 0.9 * ar[:, t - 1] + rng.normal(size=4)
    idata.posterior["participant_effects"][:, :, 0, 0] = ar
    post = idata.posterior
    ess = az.ess(post[["intercept", "residual_sd", "placebo_change"]], method="mean")
    expected = np.hstack([ess[v].values.ravel() for v in ess.data_vars]).mean() / 1600
    got = dl.relative_efficiency(idata)
    assert got == pytest.approx(expected, rel=1e-8)
    fresh = idata.copy()
    assert dl.relative_efficiency(fresh, cv.verdict(fresh).stats) == pytest.approx(got, rel=1e-12)  # read from the verdict
    everything = az.ess(post, method="mean")
    every = np.hstack([everything[v].values.ravel() for v in everything.data_vars]).mean() / 1600
    assert abs(every - got) > 0.01  # what az.loo would take differs


def test_psis_loo_in_blocks_of_units_is_the_whole_array_computation_and_arvizs():
    import warnings

    import arviz as az
    import xarray as xr

    from diagnostics import loo as dl

    rng = np.random.default_rng(4)
    units = 2 * dl.LOO_BLOCK + 17
    mu = rng.normal(0, 0.3, (2, 500, 1))
    ll = -0.5 * ((rng.standard_t(3, (1, 1, units)) - mu) / 0.8) ** 2 - np.log(0.8) - 0.5 * np.log(2 * np.pi)  # heavy tails: some k > 0.7
    whole = dl.psis_loo(np.ascontiguousarray(ll.reshape(1000, units).T), 0.9)
    blocks = dl.psis_loo_draws(ll, 0.9)
    for a, b in ((whole.elpd_i, blocks.elpd_i), (whole.pareto_k, blocks.pareto_k)):
        np.testing.assert_array_equal(a, b)
    assert whole.p_loo == blocks.p_loo
    single = dl.psis_loo_draws(ll.astype(np.float32), 0.9)  # stored as float32: the same as its float64 values
    np.testing.assert_array_equal(single.elpd_i, dl.psis_loo_draws(ll.astype(np.float32).astype(float), 0.9).elpd_i)
    data = az.InferenceData(posterior=xr.Dataset({"a": (("chain", "draw"), np.zeros((2, 500)))}),
                            log_likelihood=xr.Dataset({"y": (("chain", "draw", "obs"), ll)}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = az.loo(data, pointwise=True, reff=0.9)
    np.testing.assert_allclose(blocks.elpd_i, ref.loo_i.values, rtol=1e-12)
    np.testing.assert_allclose(blocks.pareto_k, ref.pareto_k.values, atol=1e-10)
    assert (blocks.pareto_k > 0.7).any()


def test_loo_pit_in_the_psis_pass_equals_arviz_with_the_population_r_eff():
    import warnings

    import arviz as az
    from test_diagnostics import trial_idata

    from diagnostics import loo as dl
    from diagnostics.ppc import loo_pit_values

    idata = trial_idata(seed=41, n=150)  # more observations than a block
    rng = np.random.default_rng(5)
    idata.posterior["participant_effects"] = (("chain", "draw", "participant", "participant_effect"), rng.normal(size=(2, 400, 150, 2)))
    idata.posterior = idata.posterior.assign_attrs(fit_path="marginal")
    r_eff = dl.relative_efficiency(idata)
    stacked = idata.log_likelihood["y"].stack(__sample__=("chain", "draw"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights, _ = az.psislw(-stacked, reff=r_eff)
        expected = np.asarray(az.loo_pit(idata, y="y", log_weights=weights), dtype=float).ravel()
    pit = loo_pit_values(idata)
    np.testing.assert_allclose(pit, expected, rtol=1e-12, atol=1e-14)
    assert dl.pointwise_psis(idata).pit is pit  # one pass: the LOO at the visit level, the LOO-PIT and its figure
    fresh = trial_idata(seed=41, n=150)  # the LOO first, then the LOO-PIT: computed again with it, the same weights
    first = dl.pointwise_psis(fresh)
    assert first.pit is None and loo_pit_values(fresh) is not None
    np.testing.assert_array_equal(dl.pointwise_psis(fresh).elpd_i, first.elpd_i)


def test_checks_read_from_observation_major_replicates_are_the_same_to_the_last_bit():
    from test_diagnostics import trial_idata

    from diagnostics.ppc import QUANTILES, obs_index, observation_major, rate_check, replicated, trajectory_check, visit_distribution

    idata = trial_idata(seed=42, n=120)
    ix = obs_index(idata)
    rep_c = np.ascontiguousarray(replicated(idata))
    rep_f = observation_major(rep_c)
    assert rep_f.flags.f_contiguous and np.array_equal(rep_f, rep_c)
    for check in (trajectory_check, visit_distribution, rate_check):
        pd.testing.assert_frame_equal(check(idata, ix, rep=rep_f), check(idata, ix, rep=rep_c), check_exact=True)
    table = visit_distribution(idata, ix, rep=rep_f).set_index("week")
    for w in ix.weeks:  # the quantiles from the sorted scores: np.quantile's
        assert [table.loc[int(w), f"replicated_q{q:g}"] for q in QUANTILES] == list(np.quantile(rep_c[:, ix.week == w], QUANTILES))


def test_saved_fit_reads_back_as_xarray_writes_each_group(tmp_path):
    """The file written in one session reads back identical, group by group, to the fit (and to what
    Dataset.to_netcdf per group writes): floats, integers, booleans, strings and attributes."""
    import arviz as az
    import xarray as xr

    from inference.idata_io import save_idata

    rng = np.random.default_rng(6)
    idata = _fit(rng, "marginal")
    idata.add_groups({"trial_data": xr.Dataset({"arm": ("participant", np.array(["placebo", "nac"] * 15)),
                                                "score": (("participant", "week"), rng.normal(size=(30, 3))),
                                                "flag": ("participant", rng.random(30) < 0.5)},
                                               coords={"participant": [f"P{i:02d}" for i in range(30)], "week": [0, 4, 8]},
                                               attrs={"note": "kept"})})
    idata.posterior.attrs["created"] = "2026-01-01"
    save_idata(idata, tmp_path / "one.nc")
    mode = "w"
    for group in idata.groups():
        idata[group].to_netcdf(tmp_path / "each.nc", mode=mode, group=group, engine="h5netcdf")
        mode = "a"
    one, each = az.from_netcdf(tmp_path / "one.nc"), az.from_netcdf(tmp_path / "each.nc")
    assert one.groups() == each.groups() == idata.groups()
    for group in idata.groups():
        xr.testing.assert_identical(one[group].load(), each[group].load())
        xr.testing.assert_identical(one[group], idata[group])
