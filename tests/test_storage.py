"""Saved fits: the stored form keeps what cannot be recomputed, and load_fit restores the rest exactly."""

from __future__ import annotations

import arviz as az
import numpy as np
import pymc as pm
import pytest
import xarray as xr

import deptrial
from inference.idata_io import stamp
from inference.sampling import _add_data_groups, complete_fit
from inference.storage import RECOMPUTED, SavedFitError, load_fit, save_fit
from models import build_design, get
from models.priors import to_json

SEED = 8


def _fit(small_trial, name: str, fast: bool):
    """A 'fit' whose posterior is 2 x 25 prior draws of the sampled model: storage does not care where draws come from."""
    built = get(name).build(build_design(small_trial))
    sampled = built.fast_variant() if fast else built
    with sampled.model:
        prior = pm.sample_prior_predictive(draws=50, random_seed=3).prior
    free = list(prior.data_vars)  # the sampled parameters and the model's deterministics, as a sampler stores them
    posterior = xr.Dataset(
        {v: (("chain", "draw", *prior[v].dims[2:]), prior[v].values.reshape(2, 25, *prior[v].shape[2:])) for v in free},
        coords={d: prior[d].values for v in free for d in prior[v].dims[2:]},
    )
    idata = az.InferenceData(posterior=posterior)
    idata.posterior.attrs["fit_path"] = "marginal" if fast else "plain"
    _add_data_groups(idata, built.model)
    complete_fit(idata, built, SEED)
    stamp(idata, model=name, likelihood="normal", priors=to_json(built.priors), seed=SEED, data_checksum=built.design.checksum)
    return idata


@pytest.fixture(scope="module")
def fits(small_trial):
    return {"fast": _fit(small_trial, "treatment", True), "plain": _fit(small_trial, "null", False)}


@pytest.mark.smoke
@pytest.mark.parametrize("path", ["fast", "plain"])
def test_saved_fit_reads_back_identical(fits, small_trial, tmp_path, path):
    """Both fit paths: what a saved fit recomputes equals the run's values bit for bit; the file stores none of it."""
    idata = fits[path]
    save_fit(idata, tmp_path / "idata.nc", dataset=small_trial)
    stored = load_fit(tmp_path / "idata.nc", complete=False)
    assert not set(RECOMPUTED) & set(stored.groups()) and "trial_data" in stored.groups()
    back = load_fit(tmp_path / "idata.nc")
    for group in (*RECOMPUTED, "posterior", "constant_data"):
        for var in idata[group].data_vars:
            np.testing.assert_array_equal(back[group][var].values, idata[group][var].values, err_msg=f"{group}/{var}")
    assert list(back.constant_data["participant"].values) == list(small_trial["participant"].values)


@pytest.mark.smoke
def test_a_saved_fit_whose_dataset_was_altered_is_refused(fits, small_trial, tmp_path):
    altered = small_trial.copy(deep=True)
    altered["score"][0, 0] = altered["score"][0, 0] + 1
    save_fit(fits["fast"], tmp_path / "idata.nc", dataset=altered.assign_attrs(checksum="not the fitted data"))
    with pytest.raises(SavedFitError, match="checksum"):
        deptrial.load_fit(tmp_path / "idata.nc")
