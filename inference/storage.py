"""Saved fits: what a results folder keeps of each InferenceData, and how a saved fit is read back whole.

One netCDF4 (HDF5) file per fit, out/<model>/idata.nc. It stores what cannot be recomputed:

- posterior: the sampled parameters and the model's named summaries, float64, as sampled;
- sample_stats, prior (float64) and prior_predictive (float32, as the run made it);
- observed_data and constant_data, as the model saw them;
- trial_data: the validated dataset the model was built from (what `data.load_dataset` returns),
  so the file stands on its own: it can be read back, re-diagnosed and refitted without the
  original dataset folder, and its checksum ties it to that folder.

It does not store what is an exact function of those and of the run's seed: the outcome's
pointwise log_likelihood and posterior_predictive and, for a fit on the fast path, the
participant effects (drawn from their exact conditional posterior). Those are most of an
InferenceData (8.8 million values each for 252 participants and 6000 draws) and no lossless
compression shrinks random draws much. `load_fit` rebuilds the model from trial_data and the
recorded model, likelihood and priors and recomputes them with `inference.sampling.complete_fit`,
the function the run itself used, from the same seed streams: the same numbers, to the last bit.
No variable is compressed: random draws barely compress (inference.idata_io COMPRESSION).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import arviz as az
import xarray as xr

from models import build_design, get
from models.design import fitted_covariates

from .idata_io import load_idata, provenance, save_idata
from .marginal import PARTICIPANT_VARS
from .sampling import complete_fit

FORMAT = "deptrial-fit-2"
RECOMPUTED = ("log_likelihood", "posterior_predictive")
DATA_GROUP = "trial_data"

STORAGE = {
    "format": FORMAT,
    "file": "<model>/idata.nc, netCDF4 (HDF5); read it whole with deptrial.load_fit(path)",
    "compression": "none: random draws barely compress (gzip with byte shuffle: files 10-15% smaller, written in twice the time)",
    "float64": ["posterior", "sample_stats", "prior", "observed_data", "constant_data"],
    "float32": ["prior_predictive"],
    "not_stored": [
        "log_likelihood", "posterior_predictive",
        "posterior participant_raw and participant_effects of fast-path fits",
    ],
    "recomputed_by": "inference.sampling.complete_fit from the posterior, trial_data and the run's seed: identical to the run's values",
    "trial_data": "the validated dataset the model was built from (data.load_dataset's output)",
}


class SavedFitError(ValueError):
    """A saved fit cannot be read back whole (no dataset in it, or a dataset that does not match)."""


def stored_form(idata: az.InferenceData, dataset: xr.Dataset | None) -> az.InferenceData:
    """The groups a saved fit keeps (see the module doc); `idata` itself is not changed."""
    groups = {g: idata[g] for g in idata.groups() if g not in RECOMPUTED and g != DATA_GROUP}
    post = groups["posterior"]
    if post.attrs.get("fit_path") == "marginal":
        post = post.drop_vars([v for v in PARTICIPANT_VARS if v in post])
        groups["posterior"] = post
    groups["posterior"] = groups["posterior"].assign_attrs(storage=FORMAT)
    if dataset is not None:
        groups[DATA_GROUP] = dataset
    elif DATA_GROUP in idata.groups():
        groups[DATA_GROUP] = idata[DATA_GROUP]
    return az.InferenceData(**groups)


def save_fit(idata: az.InferenceData, path: str | Path, dataset: xr.Dataset | None = None) -> dict:
    """Write the stored form of a fit atomically; returns {'bytes', 'write_s'}.

    dataset: the validated dataset the model was built from (kept in the file as trial_data; without
    it, the file cannot be completed by `load_fit` and keeps its computed groups instead)."""
    t0 = time.perf_counter()
    if dataset is None and DATA_GROUP not in idata.groups():
        written = save_idata(idata, path)
    else:
        written = save_idata(stored_form(idata, dataset), path)
    return {"bytes": written.stat().st_size, "write_s": time.perf_counter() - t0}


def needs_completion(idata: az.InferenceData) -> bool:
    return any(g not in idata.groups() for g in RECOMPUTED)


def saved_dataset(idata: az.InferenceData) -> xr.Dataset:
    """The validated dataset stored in a saved fit (SavedFitError if the file has none)."""
    if DATA_GROUP not in idata.groups():
        raise SavedFitError("the saved fit holds no trial_data group, so it cannot be completed or refitted")
    ds = idata[DATA_GROUP].load()
    return ds


def complete_saved(idata: az.InferenceData) -> az.InferenceData:
    """Recompute, in place, the groups a saved fit does not store (see the module doc)."""
    if not needs_completion(idata):
        return idata
    prov = provenance(idata)
    design = build_design(saved_dataset(idata))
    if prov.get("data_checksum") and design.checksum != prov["data_checksum"]:
        raise SavedFitError("the saved fit's trial_data does not match the checksum it was fitted to")
    try:
        spec = get(str(prov["model"]))
    except KeyError as exc:
        raise SavedFitError(f"the saved fit's model {prov.get('model')!r} is not a registered model") from exc
    built = spec.build(design, **build_arguments(idata, spec, design))
    complete_fit(idata, built, int(prov["seed"]))
    return idata


def build_arguments(idata: az.InferenceData, spec, design) -> dict:
    """The arguments of `spec.build(design, ...)` that rebuild a saved fit's model as it was fitted: the priors and
    likelihood its provenance records and, for a model that takes covariates, the covariates its posterior's
    'covariate' coordinate names."""
    prov = provenance(idata)
    priors = prov.get("priors")
    out = {"priors": json.loads(priors) if isinstance(priors, str) else (priors or None), "likelihood": str(prov.get("likelihood", "normal"))}
    if spec.covariates:
        coords = idata.posterior.coords
        out["covariates"] = fitted_covariates(coords["covariate"].values if "covariate" in coords else None, design)
    return out


def load_fit(path: str | Path, complete: bool = True) -> az.InferenceData:
    """A saved fit with every group, the recomputed ones included (complete=False: as stored)."""
    idata = load_idata(path)
    if complete and needs_completion(idata) and DATA_GROUP in idata.groups():
        complete_saved(idata)
    return idata


def scores_visits(idata: az.InferenceData) -> bool:
    """Whether a saved fit is in the report's comparison: the visit scores as its outcome, or the MMRM (whose
    integrated densities are those of the post-baseline scores given the baseline)."""
    try:
        return get(str(provenance(idata).get("model", ""))).compared
    except KeyError:
        return "y" in (idata.observed_data if "observed_data" in idata.groups() else {})
