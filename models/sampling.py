"""Sampling a built model into one InferenceData with every group a later step needs.

One seed drives everything: it is split (numpy SeedSequence) into independent streams for
the prior draws, the posterior sampler and the posterior predictive, so the same seed gives
the same numbers and changing the number of prior draws does not change the posterior.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass

import arviz as az
import numpy as np
import pymc as pm

SAMPLERS = ("nutpie", "pymc")


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str = "nutpie"
    draws: int = 1500
    tune: int = 1000
    chains: int = 4
    cores: int = 2
    target_accept: float = 0.9
    prior_draws: int = 500
    seed: int = 1

    def as_attrs(self) -> dict:
        return {f"sampler_{k}": v for k, v in self.__dict__.items()}


def seed_streams(seed: int, n: int = 4) -> list[int]:
    """Independent 32-bit seeds for prior, posterior, predictive and spare streams."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def sample_posterior(model: pm.Model, settings: SamplerSettings, quiet: bool = False) -> tuple[az.InferenceData, dict]:
    """Posterior draws with the chosen sampler; returns (idata, timings in seconds)."""
    _, post_seed, _, _ = seed_streams(settings.seed)
    timings = {}
    if settings.sampler == "nutpie":
        import nutpie

        t0 = time.perf_counter()
        compiled = nutpie.compile_pymc_model(model, backend="numba")
        timings["compile_s"] = time.perf_counter() - t0
        _log(f"  compiled in {timings['compile_s']:.1f} s; sampling {settings.chains} chains x {settings.draws} draws", quiet)
        t0 = time.perf_counter()
        idata = nutpie.sample(
            compiled,
            draws=settings.draws,
            tune=settings.tune,
            chains=settings.chains,
            cores=settings.cores,
            seed=post_seed,
            target_accept=settings.target_accept,
            progress_bar=not quiet and sys.stderr.isatty(),
            save_warmup=False,
        )
        timings["sample_s"] = time.perf_counter() - t0
    elif settings.sampler == "pymc":
        t0 = time.perf_counter()
        with model:
            idata = pm.sample(
                draws=settings.draws,
                tune=settings.tune,
                chains=settings.chains,
                cores=settings.cores,
                random_seed=post_seed,
                target_accept=settings.target_accept,
                progressbar=not quiet and sys.stderr.isatty(),
                compute_convergence_checks=False,
            )
        timings["sample_s"] = time.perf_counter() - t0
    else:
        raise ValueError(f"unknown sampler '{settings.sampler}'; choose from {SAMPLERS}")
    # Posterior-only keeps ordering identical across samplers; groups are added below.
    for group in ("observed_data", "constant_data", "warmup_posterior", "warmup_sample_stats"):
        if group in idata.groups():
            del idata[group]
    return idata, timings


def outcome_vars(model: pm.Model) -> list[str]:
    """The observed outcome variables (log-likelihood and predictions); auxiliary blocks excluded.

    A model may declare `model.outcome_vars`; otherwise 'y' when present, else every observed RV.
    """
    declared = getattr(model, "outcome_vars", None)
    if declared:
        return list(declared)
    names = [v.name for v in model.observed_RVs]
    return ["y"] if "y" in names else names


def sample_all(model: pm.Model, settings: SamplerSettings, quiet: bool = False) -> tuple[az.InferenceData, dict]:
    """Prior, prior predictive, posterior, posterior predictive, log-likelihood, observed and constant data."""
    prior_seed, _, pred_seed, _ = seed_streams(settings.seed)
    t_start = time.perf_counter()
    _log("  sampling prior predictive", quiet)
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        prior = pm.sample_prior_predictive(draws=settings.prior_draws, random_seed=prior_seed)
    idata, timings = sample_posterior(model, settings, quiet)
    t0 = time.perf_counter()
    with model:
        pm.compute_log_likelihood(idata, var_names=outcome_vars(model), extend_inferencedata=True, progressbar=False)
        timings["log_likelihood_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pm.sample_posterior_predictive(
            idata, var_names=outcome_vars(model), random_seed=pred_seed, extend_inferencedata=True, progressbar=False
        )
        timings["posterior_predictive_s"] = time.perf_counter() - t0
    for group in ("prior", "prior_predictive"):
        if group in prior.groups():
            idata.add_groups({group: prior[group]})
    # observed/constant data from the model itself, identical whichever sampler ran
    _add_data_groups(idata, model)
    timings["total_s"] = time.perf_counter() - t_start
    return idata, timings


def _add_data_groups(idata: az.InferenceData, model: pm.Model) -> None:
    import xarray as xr

    coords = {k: np.asarray(v) for k, v in model.coords.items() if v is not None}

    def dataset(variables):
        out = {}
        for var in variables:
            value = model.rvs_to_values[var] if var in model.rvs_to_values else var
            arr = np.asarray(value.eval() if hasattr(value, "eval") else value)
            dims = model.named_vars_to_dims.get(var.name, [f"{var.name}_dim_{i}" for i in range(arr.ndim)])
            out[var.name] = xr.DataArray(arr, dims=dims, coords={d: coords[d] for d in dims if d in coords})
        return xr.Dataset(out)

    for group in ("observed_data", "constant_data"):
        if group in idata.groups():
            del idata[group]
    idata.add_groups({"observed_data": dataset(model.observed_RVs)})
    idata.add_groups({"constant_data": dataset(model.data_vars)})
