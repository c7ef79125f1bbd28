#!/usr/bin/env python
"""Benchmark the headline fit and the MMRM: our default path against the usual public tools, side by side.

    python benchmarks/bench_fit.py                       # the headline model (quiet machine: ~1 hour on 2 cores)
    python benchmarks/bench_fit.py --model mmrm --scales 1 --paths ours,graph,pymc,numpyro   # the MMRM
    python benchmarks/bench_fit.py --tiny                # smoke test of the harness (minutes)
    python benchmarks/bench_fit.py --paths ours,pymc --scales 1
    python benchmarks/bench_fit.py --model mmrm --trial bcva --paths ours,pymc,reml   # a large simulated trial

The headline model's figures go to results.json/.md, the MMRM's to results_mmrm.json/.md. For the
MMRM, `ours` is nutpie on its fused log density (inference/kernels_mmrm.py), `graph` nutpie on the
compiled PyTensor graph, `pymc` and `numpyro` the same PyMC model through those samplers; the key
effects are the treatment difference and the SD at every post-baseline visit.

Paths (each fit runs in its own subprocess, twice: cold then warm):
  ours      the default fit: nutpie on the marginal model (participant effects integrated out,
            recovered afterwards) through its fused log density (models/fused.py), with the
            compiled-model cache (models/sampling.py)
  graph     the same marginal model through nutpie's own compile of the PyTensor graph
            (SamplerSettings(fused=False)): what the fused function replaces
  plain     nutpie on the plain headline model (participant effects sampled)
  pymc      PyMC's default NUTS (pm.sample) on the plain headline model
  numpyro   PyMC's model sampled by numpyro (pm.sample(nuts_sampler="numpyro"); needs jax)
  bambi     bambi, formula y ~ 1 + site + z + t1 + t1:treated + t1:z + t2 + t2:treated + (1 + t1 | participant)
  stan      Stan (pystan) with the same model as ours, latent biomarker block included
  reml      (MMRM) the closed-form REML MMRM of planning/mmrm_gls.py (Newton on Sigma, then GLS) on
            the same data: a same-machine frequentist reference. It has no site term (the Bayesian
            MMRM has one) and needs drop-out (prefix) patterns; it reports time and the estimates.

--trial NAME fits a simulated trial of benchmarks/bench_models.TRIALS instead of the bundled one
(bcva: the size of the mmrm package's BCVA benchmark, 1,000 participants x 10 post-baseline visits,
20 sites; bcva10: ten times its participants; visits20: 300 participants x 20 visits); its results
go to results_MODEL_NAME.json/.md.

Cold: fresh PyTensor compile folder, fresh model cache and fresh Stan model cache (nothing compiled
before); warm: the same fit again in a new process with those caches. Reported per fit: wall time
of the fit (build + compile + sample), compile and sampling time, min bulk/tail ESS over the key
effects and over all parameters, ESS per second (key-effect min bulk ESS over sampling time and over
wall time), divergences, peak memory (max RSS of the worker and its children), and for ours the
participant-effect recovery, pointwise log-likelihood, posterior predictive and LOO times. Ratios
are against bambi and PyMC's default. --scales 10 repeats everything at 10x participants.

Model differences, stated rather than hidden:
- bambi cannot express the latent biomarker block: missing standardised markers are set to 0 (the
  mean), censored ones to the standardised detection limit; its participant intercept and slope are
  independent (bambi has no LKJ option) and its priors are bambi's defaults. Same data size.
- Stan: missing and censored markers are parameters (censored ones bounded above by the limit), the
  same joint model as ours; site effects sum to zero with the same prior.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

PATHS = ("ours", "graph", "plain", "pymc", "numpyro", "bambi", "stan", "reml")
MMRM_PATHS = ("ours", "graph", "pymc", "numpyro", "reml")
KEY_EFFECTS = ("nac_w12", "nac_w16", "moderation_il6", "moderation_crp", "moderation_bdnf", "residual_sd", "participant_sd_intercept", "participant_sd_change")


# ---------------------------------------------------------------- data


def make_data(scale: int, tiny: bool, folder: Path) -> Path:
    """The bundled trial (scale 1, full run) or a simulated one with `scale` x its participants."""
    from data import DEFAULT_DATASET, TrialParameters, simulate_trial

    if scale == 1 and not tiny:
        return DEFAULT_DATASET
    n = (40 if tiny else 252) * scale
    out = folder / f"trial_{n}"
    if not out.exists():
        simulate_trial(TrialParameters(n_participants=n, seed=11)).write(out)
    return out


# ---------------------------------------------------------------- the fits (worker side)


def _key_from_ours(post, design) -> dict:
    import numpy as np

    nac = post["nac_effect"].isel(active_arm=0)  # the benchmark trial has two arms
    weeks = list(nac["week"].values)
    out = {"nac_w12": nac.sel(week=design.meta.treatment_end), "nac_w16": nac.sel(week=weeks[-1])}
    for k, m in enumerate(design.baseline.names):
        out[f"moderation_{m}"] = post["moderation_per_doubling"].isel(marker=k)
    out["residual_sd"] = post["residual_sd"]
    out["participant_sd_intercept"] = post["participant_sd"].isel(participant_effect=0)
    out["participant_sd_change"] = post["participant_sd"].isel(participant_effect=1)
    return {k: np.asarray(v.values) for k, v in out.items()}


def _key_mmrm(post, design) -> dict:
    import numpy as np

    out = {}
    for w in post["week"].values[1:]:
        out[f"nac_w{int(w)}"] = np.asarray(post["nac_effect"].isel(active_arm=0).sel(week=w).values)
    for v in post["visit"].values:
        out[f"sd_w{int(v)}"] = np.asarray(post["visit_sd"].sel(visit=v).values)
    return out


def key_effects(model: str):
    return _key_mmrm if model == "mmrm" else _key_from_ours


def fit_ours(design, args, plain: bool, fused: bool = True) -> dict:
    from inference.sampling import SamplerSettings, complete_fit, sample_posterior
    from models import get

    settings = SamplerSettings(draws=args.draws, tune=args.tune, chains=args.chains, cores=args.cores, seed=args.seed, fused=fused)
    t0 = time.perf_counter()
    if args.model == "mmrm":
        built = get("mmrm").build(design)
        idata, timings = sample_posterior(built, settings, quiet=True)
        extra = complete_fit(idata, built, settings.seed)
        return {"idata": idata, "key": _key_mmrm(idata.posterior, design), "compile_s": timings["compile_s"], "sample_s": timings["sample_s"],
                "wall_s": time.perf_counter() - t0, **extra}
    built = get("headline").build(design)
    fast = None if plain else built.fast_variant()
    idata, timings = sample_posterior(fast or built, settings, quiet=True)
    extra = {}
    if not plain:
        idata.posterior.attrs["fit_path"] = "marginal"
        extra = complete_fit(idata, built, settings.seed, fast=fast)
    wall = time.perf_counter() - t0
    if not plain:
        extra.update(_loo_times(idata, design))
    return {"idata": idata, "key": _key_from_ours(idata.posterior, design), "compile_s": timings["compile_s"], "sample_s": timings["sample_s"], "wall_s": wall, **extra}


def _loo_times(idata, design) -> dict:
    """Pointwise LOO and leave-one-participant-out LOO (log-likelihood summed per participant)."""
    import arviz as az
    import xarray as xr

    out = {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        az.loo(idata, pointwise=True, var_name="y")
    out["loo_pointwise_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ll = idata.log_likelihood["y"]
    grouped = ll.groupby(xr.DataArray(design.obs_participant, dims="obs", name="participant_idx")).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        az.loo(az.InferenceData(posterior=idata.posterior, log_likelihood=xr.Dataset({"y": grouped})), pointwise=True)
    out["loo_participant_s"] = time.perf_counter() - t0
    return out


def _register_jax_erfcinv() -> None:
    """PyTensor's JAX backend has erfcinv only through tensorflow-probability: use jax's ndtri."""
    from pytensor.link.jax.dispatch import jax_funcify
    from pytensor.scalar.math import Erfcinv

    @jax_funcify.register(Erfcinv)
    def _jax_erfcinv(op, **kwargs):
        import jax.numpy as jnp
        from jax.scipy.special import ndtri

        def erfcinv(x):
            return -ndtri(x / 2.0) / jnp.sqrt(2.0)

        return erfcinv


def fit_pymc(design, args, sampler: str) -> dict:
    import pymc as pm

    from inference.sampling import seed_streams
    from models import get

    if sampler == "numpyro":
        _register_jax_erfcinv()
    t0 = time.perf_counter()
    model = get(args.model).build(design).model
    compile_s = None
    if sampler == "pymc":  # PyMC compiles logp and gradient inside pm.sample; time that step on its own
    # (pm.sample then reuses PyTensor's compile cache)
        tc = time.perf_counter()
        model.logp_dlogp_function()
        compile_s = time.perf_counter() - tc
    ts = time.perf_counter()
    kwargs = {} if sampler == "pymc" else {"nuts_sampler": "numpyro"}
    with model:
        idata = pm.sample(
            draws=args.draws, tune=args.tune, chains=args.chains, cores=args.cores, random_seed=seed_streams(args.seed)[1],
            progressbar=False, compute_convergence_checks=False, **kwargs,
        )
    sample_s = time.perf_counter() - ts
    key = key_effects(args.model)(idata.posterior, design)
    return {"idata": idata, "key": key, "compile_s": compile_s, "sample_s": sample_s, "wall_s": time.perf_counter() - t0}


def _flat_frame(design):
    """Long table for bambi: markers completed by their mean (missing) or detection limit (censored)."""
    import numpy as np
    import pandas as pd

    md = design.baseline
    z = np.where(md.missing, 0.0, np.where(md.censored, md.z_upper, md.z))
    pid = design.obs_participant
    frame = {
        "y": design.y,
        "participant": pd.Categorical(np.asarray(design.participants)[pid].astype(str)),
        "site": pd.Categorical(np.asarray(design.sites)[design.site_idx[pid]]),
        "treated": design.arm_indicator()[pid, 0],  # the benchmark trial has two arms
        "t1": design.t1,
        "t2": design.t2,
    }
    for k, m in enumerate(md.names):
        frame[f"z_{m}"] = z[pid, k]
    return pd.DataFrame(frame)


def fit_bambi(design, args) -> dict:
    import bambi as bmb
    import numpy as np

    from inference.sampling import seed_streams

    t0 = time.perf_counter()
    df = _flat_frame(design)
    markers = design.baseline.names
    zs = " + ".join(f"z_{m}" for m in markers)
    mods = " + ".join(f"t1:z_{m}" for m in markers)
    formula = f"y ~ 1 + site + {zs} + t1 + t1:treated + {mods} + t2 + t2:treated + (1 + t1 | participant)"
    model = bmb.Model(formula, df)
    tc = time.perf_counter()
    model.build()
    compile_s = time.perf_counter() - tc
    ts = time.perf_counter()
    idata = model.fit(draws=args.draws, tune=args.tune, chains=args.chains, cores=args.cores, random_seed=seed_streams(args.seed)[1], progressbar=False)
    sample_s = time.perf_counter() - ts
    post = idata.posterior
    per_doubling = np.log(2.0) / design.baseline.log_scale
    key = {"nac_w12": post["t1:treated"].values, "nac_w16": (post["t1:treated"] + post["t2:treated"]).values}
    for k, m in enumerate(markers):
        key[f"moderation_{m}"] = post[f"t1:z_{m}"].values * per_doubling[k]
    key["residual_sd"] = post["sigma"].values
    key["participant_sd_intercept"] = post["1|participant_sigma"].values
    key["participant_sd_change"] = post["t1|participant_sigma"].values
    return {"idata": idata, "key": key, "compile_s": compile_s, "sample_s": sample_s, "wall_s": time.perf_counter() - t0, "formula": formula}


STAN_PROGRAM = """
data {
  int<lower=1> N; int<lower=1> P; int<lower=1> S; int<lower=1> K;
  array[N] int<lower=1, upper=P> pid; vector[N] t1; vector[N] t2; vector[N] y;
  vector[P] treated; array[P] int<lower=1, upper=S> site;
  matrix[P, K] zobs;
  int<lower=0> n_miss; array[n_miss] int miss_i; array[n_miss] int miss_k;
  int<lower=0> n_cens; array[n_cens] int cens_i; array[n_cens] int cens_k; vector[n_cens] cens_up;
  real intercept_mu; real intercept_sd; real time_sd; real nac_sd; real marker_effect_sd; real site_sd;
  real participant_sd_sd; real lkj_eta; real residual_sd_sd;
}
parameters {
  vector[K] m_mean; vector<lower=0>[K] m_sd; vector[K * (K - 1) / 2] m_reg;
  vector[n_miss] z_miss; vector<upper=cens_up>[n_cens] z_cens;
  real intercept; vector[2] time_change; vector[2] nac_change; vector[K] prognostic; vector[K] moderation;
  vector[S - 1] site_free;
  cholesky_factor_corr[2] L_corr; vector<lower=0>[2] tau; matrix[2, P] b_raw;
  real<lower=0> sigma;
}
transformed parameters {
  vector[S] site_effect = append_row(site_free, -sum(site_free));
}
model {
  matrix[P, K] z = zobs;
  for (j in 1:n_miss) z[miss_i[j], miss_k[j]] = z_miss[j];
  for (j in 1:n_cens) z[cens_i[j], cens_k[j]] = z_cens[j];
  {
    int link = 1;
    for (k in 1:K) {
      vector[P] mu_k = rep_vector(m_mean[k], P);
      for (j in 1:(k - 1)) { mu_k += m_reg[link] * z[:, j]; link += 1; }
      z[:, k] ~ normal(mu_k, m_sd[k]);
    }
  }
  matrix[P, 2] b = (diag_pre_multiply(tau, L_corr) * b_raw)';
  vector[P] level = intercept + site_effect[site] + b[:, 1] + z * prognostic;
  vector[P] change1 = time_change[1] + nac_change[1] * treated + z * moderation + b[:, 2];
  vector[P] change2 = time_change[2] + nac_change[2] * treated;
  y ~ normal(level[pid] + change1[pid] .* t1 + change2[pid] .* t2, sigma);
  m_mean ~ normal(0, 1); m_sd ~ normal(0, 1); m_reg ~ normal(0, 0.5);
  intercept ~ normal(intercept_mu, intercept_sd); time_change ~ normal(0, time_sd); nac_change ~ normal(0, nac_sd);
  prognostic ~ normal(0, marker_effect_sd); moderation ~ normal(0, marker_effect_sd);
  site_effect ~ normal(0, site_sd);
  L_corr ~ lkj_corr_cholesky(lkj_eta); tau ~ normal(0, participant_sd_sd); to_vector(b_raw) ~ std_normal();
  sigma ~ normal(0, residual_sd_sd);
}
generated quantities {
  real nac_w12 = nac_change[1];
  real nac_w16 = nac_change[1] + nac_change[2];
  real residual_sd = sigma;
  real participant_sd_intercept = tau[1];
  real participant_sd_change = tau[2];
}
"""


def stan_data(design) -> dict:
    import numpy as np

    from models import get

    pri = get("headline").build(design).priors
    md = design.baseline
    miss_i, miss_k = np.nonzero(md.missing)
    cens_i, cens_k = np.nonzero(md.censored)
    return {
        "N": len(design.y), "P": design.n_participants, "S": len(design.sites), "K": len(md.names),
        "pid": (design.obs_participant + 1).tolist(), "t1": design.t1.tolist(), "t2": design.t2.tolist(), "y": design.y.tolist(),
        "treated": design.arm_indicator()[:, 0].tolist(), "site": (design.site_idx + 1).tolist(),
        "zobs": np.nan_to_num(md.z, nan=0.0).tolist(),
        "n_miss": len(miss_i), "miss_i": (miss_i + 1).tolist(), "miss_k": (miss_k + 1).tolist(),
        "n_cens": len(cens_i), "cens_i": (cens_i + 1).tolist(), "cens_k": (cens_k + 1).tolist(), "cens_up": md.z_upper[cens_i, cens_k].tolist(),
        "intercept_mu": pri["intercept"].params["mu"], "intercept_sd": pri["intercept"].params["sigma"],
        "time_sd": pri["time_change"].params["sigma"], "nac_sd": pri["nac_change"].params["sigma"],
        "marker_effect_sd": pri["marker_moderation"].params["sigma"], "site_sd": pri["site"].params["sigma"],
        "participant_sd_sd": pri["participant_sd"].params["sigma"], "lkj_eta": pri["participant_corr"].params["eta"],
        "residual_sd_sd": pri["residual_sd"].params["sigma"],
    }


def fit_stan(design, args) -> dict:
    import aiohttp.client
    import arviz as az
    import numpy as np
    import stan

    from inference.sampling import seed_streams

    # pystan talks to its compile server with aiohttp's default 5-minute timeout, which a C++
    # compile on a busy 2-core machine can exceed
    aiohttp.client.DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None)
    t0 = time.perf_counter()
    tc = time.perf_counter()
    posterior = stan.build(STAN_PROGRAM, data=stan_data(design), random_seed=seed_streams(args.seed)[1] % (2**31))
    compile_s = time.perf_counter() - tc
    ts = time.perf_counter()
    fit = posterior.sample(num_chains=args.chains, num_samples=args.draws, num_warmup=args.tune)
    sample_s = time.perf_counter() - ts
    idata = az.from_pystan(posterior=fit)
    post = idata.posterior
    per_doubling = np.log(2.0) / design.baseline.log_scale
    key = {k: post[k].values for k in ("nac_w12", "nac_w16", "residual_sd", "participant_sd_intercept", "participant_sd_change")}
    for k, m in enumerate(design.baseline.names):
        key[f"moderation_{m}"] = post["moderation"].values[..., k] * per_doubling[k]
    return {"idata": idata, "key": key, "compile_s": compile_s, "sample_s": sample_s, "wall_s": time.perf_counter() - t0}


def fit_reml_reference(design) -> dict:
    """The closed-form REML MMRM (planning/mmrm_gls.py) on the design's changes from baseline: time and estimates."""
    import numpy as np

    from models.mmrm import mmrm_data
    from planning.mmrm_gls import fit_reml, pattern_stats

    t0 = time.perf_counter()
    d = mmrm_data(design)
    observed = ~np.isnan(d.change)
    attended = observed.sum(axis=1)
    if not np.array_equal(observed, np.arange(observed.shape[1])[None, :] < attended[:, None]):
        raise SystemExit("the closed-form REML covers drop-out (prefix) patterns only; this trial has intermittent gaps")
    stats = pattern_stats(np.nan_to_num(d.change)[None], attended[None], design.arm_idx[d.rows][None], d.baseline[None], design.n_active)
    fit = fit_reml(stats)
    wall = time.perf_counter() - t0
    key = {}
    for j, w in enumerate(d.visits):
        est, se = fit.effect(j)
        key[f"nac_w{int(w)}"] = {"estimate": float(est[0]), "se": float(se[0])}
    return {"wall_s": wall, "sample_s": None, "compile_s": None, "iterations": int(fit.iterations), "converged": bool(fit.ok[0]),
            "reml_effects": key}


def worker(args) -> dict:
    """One fit in this process; returns the measurements (JSON-able)."""
    import arviz as az
    import numpy as np

    from data import load_dataset
    from models import build_design

    t_proc = time.perf_counter()
    design = build_design(load_dataset(args.data))
    if args.worker == "reml":
        res = fit_reml_reference(design)
        res.update(model=args.model, path="reml", participants=int(design.n_participants), visits=int(len(design.y)),
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, process_s=time.perf_counter() - t_proc)
        return res
    if args.worker in ("ours", "plain", "graph"):
        res = fit_ours(design, args, plain=args.worker == "plain", fused=args.worker != "graph")
    elif args.worker in ("pymc", "numpyro"):
        res = fit_pymc(design, args, args.worker)
    elif args.worker == "bambi":
        res = fit_bambi(design, args)
    elif args.worker == "stan":
        res = fit_stan(design, args)
    else:
        raise SystemExit(f"unknown path {args.worker}")
    idata = res.pop("idata")
    key = res.pop("key")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key_bulk = {k: float(az.ess(v, method="bulk")) for k, v in ((k, np.asarray(v)) for k, v in key.items())}
        key_tail = {k: float(az.ess(v, method="tail")) for k, v in ((k, np.asarray(v)) for k, v in key.items())}
        names = [v for v in idata.posterior.data_vars if idata.posterior[v].dtype.kind == "f"]
        all_bulk = az.ess(idata, var_names=names, method="bulk")
        all_tail = az.ess(idata, var_names=names, method="tail")
    def vmin(ds):
        vals = [float(np.nanmin(ds[v].values)) for v in ds.data_vars if np.isfinite(ds[v].values).any()]
        return min(vals) if vals else float("nan")
    stats = idata.sample_stats
    div = int(stats["diverging"].sum()) if "diverging" in stats else None
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res.update(
        model=args.model,
        path=args.worker,
        participants=int(design.n_participants),
        visits=int(len(design.y)),
        key_min_bulk_ess=min(key_bulk.values()),
        key_min_tail_ess=min(key_tail.values()),
        key_bulk_ess=key_bulk,
        key_means={k: float(np.mean(v)) for k, v in key.items()},
        all_min_bulk_ess=vmin(all_bulk),
        all_min_tail_ess=vmin(all_tail),
        divergences=div,
        peak_rss_mb=max(self_rss, child_rss) / 1024.0,
        process_s=time.perf_counter() - t_proc,
    )
    res["ess_per_s_sampling"] = res["key_min_bulk_ess"] / res["sample_s"]
    res["ess_per_s_wall"] = res["key_min_bulk_ess"] / res["wall_s"]
    return res


# ---------------------------------------------------------------- the driver


def available(path: str, model: str = "headline") -> str | None:
    """None if the path's tools import here, else the reason."""
    import importlib

    needs = {"numpyro": ["jax", "numpyro"], "bambi": ["bambi"], "stan": ["stan"]}.get(path, [])
    if model == "mmrm" and path not in MMRM_PATHS:
        return f"not a path for the MMRM (choose from {', '.join(MMRM_PATHS)})"
    for mod in needs:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # noqa: BLE001 - report any import failure
            return f"{mod} not importable ({type(exc).__name__}: {exc}); pip install -e '.[bench]'"
    return None


def run_worker(path: str, data: Path, args, env: dict, timeout: float) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_file = Path(fh.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", path, "--data", str(data), "--result", str(result_file)]
    cmd += ["--model", args.model, "--draws", str(args.draws), "--tune", str(args.tune), "--chains", str(args.chains), "--cores", str(args.cores), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"path": path, "error": f"timed out after {timeout:.0f} s"}
    outer = time.perf_counter() - t0
    if proc.returncode != 0 or not result_file.exists() or not result_file.stat().st_size:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"path": path, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    res = json.loads(result_file.read_text())
    result_file.unlink()
    res["subprocess_s"] = outer
    return res


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.{nd}f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"
    return str(v)


def header(meta: dict) -> str:
    """The line atop results.md: when, where and under what load the figures were measured."""
    def load(key):
        value = meta.get(key)
        return "not recorded" if value is None else ", ".join(f"{x:.2f}" for x in value) + " (1, 5, 15 min)"

    memory = f", {meta['memory_gb']} GiB" if meta.get("memory_gb") else ""
    return (
        f"Model: {meta.get('model', 'headline')}"
        + (f", trial {meta['trial']} {meta.get('trial_size', '')}" if meta.get("trial", "bundled") != "bundled" else "")
        + f". Measured {meta.get('date', 'date not recorded')} on {meta.get('machine') or 'a machine not recorded'}, "
        f"{meta.get('cpus', '?')} CPUs{memory}; "
        f"load average at the start {load('load_start')}, at the end {load('load_end')}. "
        + ("chains, draws and tuning steps as each row states (rows added with --append), "
           if meta.get("appended") else f"{meta.get('chains', '?')} chains x {meta.get('draws', '?')} draws after {meta.get('tune', '?')} tuning steps, ")
        + f"seed {meta.get('seed', '?')}{' (tiny smoke run)' if meta.get('tiny') else ''}. "
        "Regenerate with `python benchmarks/bench_fit.py` (docs/performance.md)."
    )


def render(meta: dict, results: list[dict]) -> str:
    """results.md from what results.json holds (ratios recomputed: only between runs of equal settings)."""
    for r in results:  # rows saved before rows recorded their own settings ran with the run's
        r.setdefault("model", meta.get("model", "headline"))
        for k in ("chains", "draws", "tune"):
            r.setdefault(k, meta.get(k))
    add_ratios(results, meta)
    text = header(meta) + "\n\n" + table(results) + (
        "\n\nA ratio 'x tool' is ESS/s over that tool's ESS/s in a run with the same chains, draws and tuning steps; "
        "'-' means no such run.")
    reml = [r for r in results if r.get("path") == "reml" and "reml_effects" in r]
    bayes = [r for r in results if r.get("path") == "ours" and "key_means" in r]
    if reml and bayes:
        lines = ["| visit | REML estimate | REML SE | ours posterior mean |", "|---|---|---|---|"]
        for k, v in reml[-1]["reml_effects"].items():
            lines.append(f"| {k.removeprefix('nac_w')} | {v['estimate']:.3f} | {v['se']:.3f} | {fmt(bayes[-1]['key_means'].get(k), 3)} |")
        text += ("\n\nTreatment difference by visit, closed-form REML (no site term) and our posterior mean (site effects included):\n\n"
                 + "\n".join(lines))
    scaling = scaling_table(results)
    if scaling:
        text += "\n\nScaling (time at this scale over time at scale 1):\n\n" + scaling
    return text


def table(results: list[dict]) -> str:
    cols = [
        ("path", "path"), ("scale", "scale"), ("run", "run"), ("wall_s", "wall s"), ("compile_s", "compile s"), ("sample_s", "sample s"),
        ("key_min_bulk_ess", "key bulk ESS"), ("key_min_tail_ess", "key tail ESS"), ("all_min_bulk_ess", "all bulk ESS"),
        ("all_min_tail_ess", "all tail ESS"), ("ess_per_s_sampling", "ESS/s sampling"), ("ess_per_s_wall", "ESS/s wall"),
        ("vs_bambi", "x bambi"), ("vs_pymc", "x pymc"), ("vs_numpyro", "x numpyro"), ("vs_stan", "x stan"),
        ("divergences", "div"), ("peak_rss_mb", "peak MB"), ("measured", "measured (UTC, 1-min load)"),
    ]
    cols = [("model", "model"), *cols[:3], ("chains", "chains"), ("draws", "draws"), ("tune", "tune"), *cols[3:]]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r.get('model', 'headline')} | {r['path']} | {r.get('scale', '')} | {r.get('run', '')} | error: {r['error'][:200]} |")
            continue
        lines.append("| " + " | ".join(fmt(r.get(c[0])) for c in cols) + " |")
    return "\n".join(lines)


RATIO_BASES = (("bambi", "vs_bambi"), ("pymc", "vs_pymc"), ("numpyro", "vs_numpyro"), ("stan", "vs_stan"))


def scaling_table(results: list[dict]) -> str:
    """Per path and run: wall and sampling time at each scale relative to scale 1, and peak memory."""
    lines = ["| path | run | scale | wall s | x wall at scale 1 | sample s | x sample at scale 1 | peak MB |", "|---|---|---|---|---|---|---|---|"]
    ok = [r for r in results if "error" not in r]
    for r in ok:
        if r["scale"] == 1:
            continue
        base = next((b for b in ok if b["path"] == r["path"] and b["run"] == r["run"] and b["scale"] == 1), None)
        if base is None:
            continue
        lines.append(
            f"| {r['path']} | {r['run']} | {r['scale']} | {fmt(r['wall_s'])} | {fmt(r['wall_s'] / base['wall_s'])} | "
            f"{fmt(r['sample_s'])} | {fmt(r['sample_s'] / base['sample_s'])} | {fmt(r.get('peak_rss_mb'))} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


SAME_SETTINGS = ("model", "scale", "run", "chains", "draws", "tune")  # a ratio compares runs equal in all of these


def add_ratios(results: list[dict], meta: dict | None = None) -> None:
    """ESS/s (key effects, sampling time) relative to bambi, PyMC default, numpyro and Stan: only against a run of the
    same model, scale and run with the same chains, draws and tuning steps (a run with fewer draws or tuning steps has
    an ESS/s that is not comparable: a short warm-up adapts badly). Ratios without such a base are left out."""
    defaults = {"model": "headline", **{k: (meta or {}).get(k) for k in ("chains", "draws", "tune")}}

    def key(r):
        return tuple(r.get(k, defaults.get(k)) for k in SAME_SETTINGS)

    for r in results:
        for ref, col in RATIO_BASES:
            r.pop(col, None)
            base = next((b for b in results if b.get("path") == ref and key(b) == key(r) and "error" not in b), None)
            # rows without ESS (errors, the REML reference) have no ratio and are no base
            if base and "ess_per_s_sampling" in r and base.get("ess_per_s_sampling", 0) > 0:
                r[col] = r["ess_per_s_sampling"] / base["ess_per_s_sampling"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("headline", "mmrm"), default="headline", help="the model benchmarked (default: headline)")
    ap.add_argument("--paths", default=None, help=f"comma-separated subset of {','.join(PATHS)} (default: every path the model has)")
    ap.add_argument("--scales", default="1,10", help="participant multipliers of the 252-participant trial")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trial", default=None, help="a simulated trial of benchmarks/bench_models.TRIALS (bcva, bcva10, visits20) instead of the bundled one")
    ap.add_argument("--tiny", action="store_true", help="smoke test: 40 participants per scale unit, 2 chains x 60 draws")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per fit")
    ap.add_argument("--runs", default="cold,warm", help="which runs per path (cold, warm or both)")
    ap.add_argument(
        "--runs-above-1",
        default=None,
        help="runs at scales above 1 for paths other than ours (default: as --runs); e.g. 'cold' keeps the 10x comparison "
        "to one fit per tool",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for results.json and results.md")
    ap.add_argument("--render", action="store_true", help="only recompute the ratios and rewrite results.json and results.md in --out (no fits)")
    ap.add_argument("--append", action="store_true",
                    help="add these fits to the results already in --out (e.g. a slow path run with fewer draws; each row records its own settings)")
    # worker mode (internal)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        res = worker(args)
        args.result.write_text(json.dumps(res, default=float))
        return 0
    stem = ("results" if args.model == "headline" else f"results_{args.model}") + (f"_{args.trial}" if args.trial else "")
    if args.trial:
        from bench_models import TRIALS

        if args.trial not in TRIALS:
            ap.error(f"unknown --trial {args.trial}; choose from {sorted(TRIALS)}")
        args.scales = "1"
    if args.render:  # the ratios again (only between runs of equal settings), the JSON and the table rewritten
        saved = json.loads((args.out / f"{stem}.json").read_text())
        add_ratios(saved["results"], saved["settings"])
        (args.out / f"{stem}.json").write_text(json.dumps(saved, indent=2, default=float) + "\n")
        (args.out / f"{stem}.md").write_text(render(saved["settings"], saved["results"]) + "\n")
        return 0
    if args.tiny:
        args.draws, args.tune, args.chains = min(args.draws, 60), min(args.tune, 60), 2
    paths = [p for p in (args.paths or ",".join(MMRM_PATHS if args.model == "mmrm" else PATHS)).split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        ap.error(f"unknown paths {sorted(unknown)}; choose from {PATHS}")
    scales = [int(s) for s in args.scales.split(",") if s]
    runs = [r for r in args.runs.split(",") if r]
    if set(runs) - {"cold", "warm"}:
        ap.error("--runs takes cold, warm or cold,warm")
    runs_above = [r for r in (args.runs_above_1 or args.runs).split(",") if r]
    results = []
    appended = args.append and (args.out / f"{stem}.json").exists()
    if appended:
        results = json.loads((args.out / f"{stem}.json").read_text())["results"]
    work = Path(tempfile.mkdtemp(prefix="deptrial-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    from inference.idata_io import load_average, machine_record

    meta = {"model": args.model, "trial": args.trial or "bundled", "appended": appended, "draws": args.draws, "tune": args.tune, "chains": args.chains, "cores": args.cores, "seed": args.seed, "tiny": args.tiny, **machine_record()}
    print(f"benchmark: paths {paths}, scales {scales}, {args.chains} chains x {args.draws} draws after {args.tune}; scratch {work}", file=sys.stderr)

    def write_results() -> str:  # after every fit, so an interrupted run keeps what it measured
        add_ratios(results)
        meta["load_end"] = load_average()
        text = render(meta, results)
        tmp = args.out / f"{stem}.json.tmp"
        tmp.write_text(json.dumps({"settings": meta, "results": results}, indent=2, default=float) + "\n")
        tmp.replace(args.out / f"{stem}.json")
        (args.out / f"{stem}.md").write_text(text + "\n")
        return text

    for scale in scales:
        if args.trial:
            from bench_models import make_trial, trial_size

            data = make_trial(args.trial, work)
            meta["trial_size"] = trial_size(args.trial)
        else:
            data = make_data(scale, args.tiny, work)
        for path in paths:
            reason = available(path, args.model)
            if reason:
                results.append({"path": path, "scale": scale, "run": "cold", "error": reason})
                continue
            caches = work / f"cache_{path}_{scale}"
            env = {**os.environ, "DEPTRIAL_CACHE": str(caches / "deptrial"), "XDG_CACHE_HOME": str(caches / "xdg"), "PYTHONWARNINGS": "ignore"}
            env["PYTENSOR_FLAGS"] = f"base_compiledir={caches / 'pytensor'}"
            path_runs = runs if (scale == 1 or path == "ours") else runs_above
            if path_runs == ["warm"]:
                path_runs = ["cold", "warm"]  # a warm run needs the cold one before it
            for run in path_runs:
                print(f"  {path} x{scale} {run} ...", file=sys.stderr, flush=True)
                started = f"{machine_record()['date'][:16]} ({load_average()[0]:.2f})"  # each row's own date and load
                res = run_worker(path, data, args, env, args.timeout)
                res.update(scale=scale, run=run, draws=args.draws, tune=args.tune, chains=args.chains, measured=started)
                results.append(res)
                print(f"    {fmt(res.get('wall_s'))} s wall" if "error" not in res else f"    {res['error']}", file=sys.stderr, flush=True)
                write_results()
    text = write_results()
    print(text)
    print(f"wrote {args.out}/{stem}.json and {stem}.md", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)  # simulated trials and the per-path compile caches
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
