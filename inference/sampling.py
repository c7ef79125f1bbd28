"""Sampling a built model into one InferenceData with every group a later step needs.

One seed drives everything: it is split (numpy SeedSequence) into independent streams for
the prior draws, the posterior sampler and the posterior predictive (the fourth stream draws
the participant effects on the fast path), so the same seed gives the same numbers and
changing the number of prior draws does not change the posterior.

Fast path: a BuiltModel may offer `fast_variant` (an exactly equivalent model that samples
faster: the trajectory models with their Gaussian participant effects integrated out,
models/marginal.py). `sample_all` then samples that variant and completes the fit (participant
effects, log-likelihood, predictions, inference/marginal.py) so the InferenceData has the same
variables as the plain path; `SamplerSettings(fast=False)` (`fit.py --plain`) keeps the plain path.
Compiling (the on-disk cache and the fused log density) is inference/compile.py.
"""

from __future__ import annotations

import resource
import sys
import time
import warnings
from dataclasses import dataclass

import arviz as az
import numpy as np
import pymc as pm
import xarray as xr
from threadpoolctl import threadpool_limits

from models.contract import VISIT_CHANGES, VISIT_SCORES, BuiltModel

from .compile import compile_nutpie, uses_fused
from .marginal import (
    INTEGRATED_NOTES,
    compile_kwargs,
    finish_marginal_fit,
    mmrm_integrated_log_likelihood,
    mmrm_log_likelihood,
    plain_integrated_log_likelihood,
    vectorised_mode,
)

SAMPLERS = ("nutpie", "pymc")
MASS_MATRICES = ("low_rank", "diag")


def nutpie_adaptation(mass_matrix: str = "low_rank") -> dict:
    """nutpie.sample's mass-matrix options: "low_rank" (the default) adapts a diagonal plus the leading eigenvectors of the
    draws' and gradients' covariance (nutpie's low-rank modified mass matrix), which follows the correlation of a
    control mean with the treatment differences and of the visits' parameters with each other; "diag" the diagonal
    only. Every nutpie fit of a model (fit.py, SBC and coverage refits) takes its options from here."""
    if mass_matrix not in MASS_MATRICES:
        raise ValueError(f"unknown mass matrix '{mass_matrix}'; choose from {MASS_MATRICES}")
    return {"low_rank_modified_mass_matrix": mass_matrix == "low_rank"}
AFTER_FIT_BLAS_THREADS = 1  # the work after sampling calls BLAS on tiny matrices (3 x 3 solves per draw): one thread


def one_blas_thread(func):
    """Run `func` with AFTER_FIT_BLAS_THREADS BLAS threads. Tiny BLAS calls repeated per draw spend more on waking and
    synchronising a second thread than on arithmetic (twice the CPU time on a busy machine); the results are the
    same (no operation of these sizes is split between threads)."""
    return threadpool_limits.wrap(limits=AFTER_FIT_BLAS_THREADS, user_api="blas")(func)


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str = "nutpie"
    draws: int = 1500
    tune: int = 1000
    chains: int = 4
    cores: int = 2
    target_accept: float = 0.9
    mass_matrix: str = "low_rank"  # nutpie's mass-matrix adaptation (`nutpie_adaptation`)
    prior_draws: int = 500
    seed: int = 1
    fast: bool = True  # sample a model's exact fast variant when it has one (models/marginal.py)
    fused: bool = True  # on the fast path, nutpie calls the fused log density (inference/kernels.py)

    def as_attrs(self) -> dict:
        return {f"sampler_{k}": v for k, v in self.__dict__.items()}


def seed_streams(seed: int, n: int = 4) -> list[int]:
    """Independent 32-bit seeds for prior, posterior, predictive and spare streams."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def sample_posterior(built: BuiltModel, settings: SamplerSettings, quiet: bool = False) -> tuple[az.InferenceData, dict]:
    """Posterior draws of `built` itself (not its fast variant) with the chosen sampler; returns (idata, timings in seconds)."""
    _, post_seed, _, _ = seed_streams(settings.seed)
    model = built.model
    timings = {}
    if settings.sampler == "nutpie":
        import nutpie

        t0 = time.perf_counter()
        compiled, cached = compile_nutpie(built, fused=settings.fused)
        timings["compile_s"] = time.perf_counter() - t0
        timings["compile_cached"] = float(cached)
        timings["fused_log_density"] = float(uses_fused(compiled))  # 1: inference/kernels*.py; 0: the compiled graph
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
            **nutpie_adaptation(settings.mass_matrix),
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


def sample_all(built: BuiltModel, settings: SamplerSettings, quiet: bool = False) -> tuple[az.InferenceData, dict]:
    """Prior, prior predictive, posterior, posterior predictive, log-likelihood, observed and constant data.

    Samples the model's exact fast variant when it has one and settings.fast (see the module doc);
    the prior, prior predictive, observed and constant data always come from `built.model` itself.
    The groups computed from the posterior are added by `complete_fit`, the same function that
    completes a saved fit read back from its file.
    """
    prior_seed = seed_streams(settings.seed)[0]
    model = built.model
    t_start = time.perf_counter()
    _log("  sampling prior predictive", quiet)
    with model, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # a few hundred draws: PyTensor's Python implementations (marginal.vectorised_mode) are as fast as compiled C
        # (1-2 s on the bundled trial's models) and there is nothing to compile (C: 15-22 s from an empty compile folder)
        prior = pm.sample_prior_predictive(draws=settings.prior_draws, random_seed=prior_seed, compile_kwargs={"mode": vectorised_mode()})
    prior_s = time.perf_counter() - t_start
    fast = None
    if settings.fast and built.fast_variant is not None:
        fast = built.fast_variant()
        _log("  fast path: participant effects integrated out analytically, recovered after sampling", quiet)
        idata, timings = sample_posterior(fast, settings, quiet)
        idata.posterior.attrs["fit_path"] = "marginal"
    else:
        idata, timings = sample_posterior(built, settings, quiet)
        idata.posterior.attrs["fit_path"] = "plain"
    # the process's peak memory by the end of sampling (MB): before the groups computed from the draws, whose
    # (chain x draw x observation) arrays dominate a large trial's memory afterwards
    timings["peak_rss_sampling_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    for group in ("prior", "prior_predictive"):
        if group in prior.groups():
            # predictive draws as float32 (7 significant digits for a score: nothing a check can see is lost)
            data = prior[group].astype("float32") if group == "prior_predictive" else prior[group]
            idata.add_groups({group: data})
    # observed/constant data from the model itself, identical whichever sampler ran
    _add_data_groups(idata, model)
    timings.update(complete_fit(idata, built, settings.seed, fast=fast))
    timings["prior_predictive_s"] = prior_s
    timings["total_s"] = time.perf_counter() - t_start
    return idata, timings


@one_blas_thread
def complete_fit(idata: az.InferenceData, built: BuiltModel, seed: int, fast: BuiltModel | None = None) -> dict[str, float]:
    """Add what is computed from the posterior draws: log_likelihood and posterior_predictive of the
    outcome, and on the fast path (posterior.attrs['fit_path'] == 'marginal') the participant effects.

    A pure function of the posterior, the data and `seed` (its predictive streams), so a saved fit,
    which stores none of these (inference/storage.py), is completed with exactly the numbers of the run.
    """
    _, _, pred_seed, spare_seed = seed_streams(seed)
    if idata.posterior.attrs.get("fit_path") == "marginal":
        if fast is None:
            if built.fast_variant is None:
                raise ValueError(f"model '{built.name}' has no fast variant, but the fit was made on the fast path")
            fast = built.fast_variant()
        return finish_marginal_fit(idata, fast, spare_seed, pred_seed)
    timings = {}
    for group in ("log_likelihood", "posterior_predictive"):
        if group in idata.groups():
            del idata[group]
    if built.observations == VISIT_CHANGES and built.pointwise is not None:
        # the MMRM: its pointwise and integrated densities and its predictions from one mean, a block of draws at a time
        t0 = time.perf_counter()
        computed = mmrm_log_likelihood(idata, built, rng=np.random.default_rng(pred_seed))
        idata.add_groups({"posterior_predictive": xr.Dataset({built.outcome_vars[0]: computed.pop("predictive")})})
        idata.add_groups({"log_likelihood": _pointwise_dataset(built, idata.posterior, {v: computed.pop(v).values for v in built.outcome_vars})})
        idata.log_likelihood = idata.log_likelihood.assign(computed)
        idata.log_likelihood.attrs.update(INTEGRATED_NOTES)
        timings["log_likelihood_s"] = time.perf_counter() - t0  # with the predictions
        return timings
    with built.model:
        # the predictions first: the log-likelihood's arrays (as large) do not exist yet while PyMC stacks its draws
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # The graph models' Potentials are likelihood terms of the biomarkers (censored values' probabilities of
            # lying below the limit; observed values' densities where missing ones are integrated out): they shape the
            # posterior (already drawn), not the outcome given the parameters, so the outcome's predictive draws given
            # each posterior draw are exact and PyMC's general warning about Potentials does not apply.
            warnings.filterwarnings("ignore", message="The effect of Potentials on other parameters is ignored", category=UserWarning)
            pm.sample_posterior_predictive(
                idata, var_names=list(built.outcome_vars), random_seed=pred_seed, extend_inferencedata=True, progressbar=False,
                compile_kwargs=compile_kwargs(),
            )
        timings["posterior_predictive_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if built.pointwise is not None:  # the model's own numpy densities: no graph to compile
            idata.add_groups({"log_likelihood": _pointwise_dataset(built, idata.posterior)})
        else:
            pm.compute_log_likelihood(idata, var_names=list(built.outcome_vars), extend_inferencedata=True, progressbar=False)
        timings["log_likelihood_s"] = time.perf_counter() - t0
    if built.observations in (VISIT_SCORES, VISIT_CHANGES):  # the densities the comparison scores (inference/marginal.py)
        t0 = time.perf_counter()
        score = plain_integrated_log_likelihood if built.observations == VISIT_SCORES else mmrm_integrated_log_likelihood
        integrated = score(idata, built)
        if integrated:
            idata.log_likelihood = idata.log_likelihood.assign(integrated)
            idata.log_likelihood.attrs.update(INTEGRATED_NOTES)
        timings["integrated_log_likelihood_s"] = time.perf_counter() - t0
    return timings


def _pointwise_dataset(built: BuiltModel, posterior, values: dict | None = None):
    """The log_likelihood group from BuiltModel.pointwise (or its `values`, computed already), with the outcome
    variables' dims and coords."""
    import xarray as xr

    model = built.model
    out = {}
    for name, values in (built.pointwise(posterior) if values is None else values).items():
        dims = ("chain", "draw", *model.named_vars_to_dims[name])
        coords = {"chain": posterior["chain"].values, "draw": posterior["draw"].values}
        coords.update({dim: np.asarray(model.coords[dim]) for dim in dims[2:]})
        out[name] = xr.DataArray(values, dims=dims, coords=coords)
    return xr.Dataset(out)


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
    constant = dataset(model.data_vars)
    if "participant" in coords and "participant" not in constant.coords:
        # the participants the fit is scored on, even when no per-participant data enter the model
        # (e.g. the null model on a single-site trial): leave-one-participant-out labels its units by them
        constant = constant.assign_coords(participant=coords["participant"])
    idata.add_groups({"constant_data": constant})
