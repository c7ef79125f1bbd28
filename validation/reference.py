"""Reference posteriors, posteriordb style: `reference/{data}-{model}.json` per registered model.

Each file holds the posterior mean, SD, MCSE of the mean, bulk ESS and R-hat of every
population-level parameter (variables with at most MAX_ELEMENTS elements per draw: participant-level
and per-observation latent values are left out), with the sampler settings and package versions
that made it. `check_reference` refits with another seed and compares each mean with the reference
within TOLERANCE_MCSE combined Monte Carlo standard errors, so a silent change in a model is caught.

    python -m validation.run --reference            # regenerate every registered model's reference
    python -m validation.run --reference mmrm null  # only these
"""

from __future__ import annotations

import json
import platform
import time
from importlib.metadata import version
from pathlib import Path

import arviz as az
import numpy as np

from inference.sampling import SamplerSettings, sample_all

HERE = Path(__file__).resolve().parent
REFERENCE_DIR = HERE / "reference"
DEFAULT_DATA = HERE.parent / "data" / "default"
MAX_ELEMENTS = 40  # variables with more elements per draw (participant- or visit-level) are not summarised
TOLERANCE_MCSE = 5.0  # |new mean - reference mean| <= this x sqrt(MCSE_ref^2 + MCSE_new^2)
REFERENCE_SETTINGS = SamplerSettings(draws=1000, tune=1000, chains=4, cores=2, prior_draws=50, seed=20260101)
CHECK_SEED = 7  # the check refits with a different seed: agreement is statistical, not a replay


def reference_path(model: str, data: str = "default", folder: Path = REFERENCE_DIR) -> Path:
    return folder / f"{data}-{model}.json"


def versions() -> dict:
    return {"python": platform.python_version(), **{p: version(p) for p in ("pymc", "pytensor", "nutpie", "arviz", "numpy")}}


def summarise_posterior(posterior) -> dict[str, dict]:
    """{'var[coord,...]': {mean, sd, mcse_mean, ess_bulk, r_hat}} for the small variables of a posterior."""
    out = {}
    for var in posterior.data_vars:
        da = posterior[var]
        if da.size / (da.sizes["chain"] * da.sizes["draw"]) > MAX_ELEMENTS:
            continue
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        stacked = da.stack(_element=extra) if extra else da.expand_dims("_element", axis=-1)
        for i in range(stacked.sizes["_element"]):
            x = stacked.values[..., i]
            if not np.all(np.isfinite(x)) or np.ptp(x) == 0:
                continue  # constants (e.g. a correlation matrix's diagonal) have no Monte Carlo error
            if extra:
                key = stacked["_element"].values[i]
                key = key if isinstance(key, tuple) else (key,)
                name = f"{var}[{','.join(str(k) for k in key)}]"
            else:
                name = var
            sd = float(x.std(ddof=1))
            out[name] = {
                "mean": float(x.mean()), "sd": sd,
                "mcse_mean": sd / float(np.sqrt(az.ess(x, method="mean"))),  # ArviZ's MCSE of the mean
                "ess_bulk": float(az.ess(x)), "r_hat": float(az.rhat(x)),
            }
    return out


def fit_model(model_name: str, data_dir: Path, settings: SamplerSettings):
    from data import load_dataset
    from models import registry
    from models.design import build_design

    spec = registry.get(model_name)
    design = build_design(load_dataset(data_dir))
    built = spec.build(design)
    # the shipped fit path (nutpie; a model's exact fast variant where it has one), as fit.py runs it
    idata, timings = sample_all(built, settings, quiet=True)
    timings["fit_path"] = idata.posterior.attrs.get("fit_path", "plain")
    return idata, timings


def generate_reference(model_name: str, data_dir: Path = DEFAULT_DATA, data_label: str = "default",
                       settings: SamplerSettings = REFERENCE_SETTINGS, folder: Path = REFERENCE_DIR) -> dict:
    from inference.idata_io import load_average, machine_record

    start = machine_record()
    t0 = time.perf_counter()
    idata, timings = fit_model(model_name, data_dir, settings)
    ref = {
        "data": data_label,
        "model": model_name,
        "likelihood": "normal",
        "settings": settings.__dict__,
        "versions": versions(),
        "divergences": int(idata.sample_stats["diverging"].sum()),
        "seconds": time.perf_counter() - t0,
        "measured": {**start, "load_end": load_average()},
        "compile_s": timings.get("compile_s"),
        "fit_path": timings.get("fit_path"),
        "parameters": summarise_posterior(idata.posterior),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = reference_path(model_name, data_label, folder)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return ref


def load_reference(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def compare_to_reference(ref: dict, new: dict[str, dict], tolerance: float = TOLERANCE_MCSE) -> list[str]:
    """Problems found: parameters missing on either side or means further apart than `tolerance` combined MCSE."""
    problems = []
    old = ref["parameters"]
    for name in sorted(set(old) | set(new)):
        if name not in new:
            problems.append(f"{name}: in the reference but not in the new fit")
            continue
        if name not in old:
            problems.append(f"{name}: in the new fit but not in the reference")
            continue
        se = np.hypot(old[name]["mcse_mean"], new[name]["mcse_mean"])
        diff = new[name]["mean"] - old[name]["mean"]
        if abs(diff) > tolerance * se:
            problems.append(f"{name}: mean {new[name]['mean']:.4g} vs reference {old[name]['mean']:.4g} "
                            f"({abs(diff) / se:.1f} combined MCSE > {tolerance})")
    return problems


def check_reference(path: Path, data_dir: Path = DEFAULT_DATA, seed: int = CHECK_SEED) -> tuple[list[str], dict]:
    ref = load_reference(path)
    known = set(SamplerSettings.__dataclass_fields__)
    settings = SamplerSettings(**{**{k: v for k, v in ref["settings"].items() if k in known}, "seed": seed})
    idata, _ = fit_model(ref["model"], data_dir, settings)
    new = summarise_posterior(idata.posterior)
    return compare_to_reference(ref, new), new


def declared_names(model) -> set[str]:
    """Every 'var[coord,...]' name a posterior of this `pm.Model` can hold, from its dims and coords (no fit)."""
    import itertools

    names = set()
    for var, dims in model.named_vars_to_dims.items():
        if not dims:
            names.add(var)
            continue
        labels = [[str(c) for c in model.coords[d]] for d in dims]
        names.update(f"{var}[{','.join(key)}]" for key in itertools.product(*labels))
    return names


def is_declared(name: str, declared: set[str], model) -> bool:
    """`name` is declared, or indexes by position (ArviZ's default dims) a variable declared without dims."""
    var, _, rest = name.partition("[")
    if name in declared:
        return True
    undimmed = {v.name for v in model.free_RVs + model.deterministics} - set(model.named_vars_to_dims)
    undimmed |= {v.name for v in model.value_vars}  # the sampler's unconstrained values
    return var in undimmed and (not rest or all(k.isdigit() for k in rest.rstrip("]").split(",")))
