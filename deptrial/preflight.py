"""What fit_trial and rediagnose refuse before any work: sampler settings the diagnostics could not check,
models the data or likelihood do not allow, prior overrides a model does not have, a bad ice.csv, contrasts
that name an arm the trial does not have (or cannot be computed), and the sensitivity options of a saved
results folder. Every refusal raises the error of the layer that finds it
(ValueError, KeyError, DatasetError, FileNotFoundError), which fit.py and diagnose.py report with exit code 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import xarray as xr

from data import load_dataset, meta_of
from data.ice import ICE_FILE, IceTable, check_ice, load_ice
from diagnostics.contrasts import Contrast, arm_sizes, parse_contrasts
from diagnostics.saved import saved_names
from diagnostics.sensitivity_analyses import SensitivityOptions, check_sensitivity_weeks
from inference.idata_io import provenance
from inference.sampling import MASS_MATRICES, SamplerSettings
from inference.storage import load_fit, saved_dataset
from models import get
from models.design import TrialDesign
from models.priors import check as check_prior
from models.priors import resolve

MIN_DRAWS_PER_CHAIN = 10  # ESS, MCSE and split R-hat need at least 4 draws per chain, E-BFMI 3
MIN_DRAWS_TOTAL = 40  # PSIS-LOO fits its Pareto tail to the largest min(20%, 3 sqrt(S)) of S ratios: at least 8 of them


def dataset_of(data) -> tuple[xr.Dataset, str]:
    """(validated dataset, its source) from a folder path or an already loaded dataset."""
    if isinstance(data, xr.Dataset):
        return data, str(data.attrs.get("source", ""))
    return load_dataset(data), str(data)


def model_specs(models: Sequence[str], likelihood: str) -> list:
    """The registry specs of `models` (KeyError for an unknown name, ValueError for a likelihood a model lacks)."""
    specs = [get(n) for n in dict.fromkeys(models)]
    for spec in specs:
        if likelihood not in spec.likelihoods:
            raise ValueError(f"model '{spec.name}' supports likelihoods {spec.likelihoods}, not '{likelihood}'")
    return specs


def read_ice(ice, ds: xr.Dataset, source: str = "") -> IceTable | None:
    """The intercurrent events for the sensitivity analyses, validated against the dataset (DatasetError).

    ice  an IceTable, the path of an ice.csv (or of a folder holding one), or None: the dataset folder's ice.csv
         (`source`) when there is one, else no table"""
    if isinstance(ice, IceTable):
        check_ice(ice, ds["participant"].values, meta_of(ds).weeks)
        return ice
    if ice is None:
        folder = Path(source) if source else None
        if folder is None or not (folder / ICE_FILE).is_file():
            return None
        return load_ice(folder / ICE_FILE, ds)
    path = Path(ice)
    if path.is_dir():
        path = path / ICE_FILE
    if not path.is_file():
        raise ValueError(f"intercurrent events: no file {path}; give the path of an ice.csv (participant_id, week, strategy; "
                         "docs/diagnostics.md#estimands-under-other-missing-data-assumptions)")
    return load_ice(path, ds)


def check_settings(settings: SamplerSettings) -> None:
    """Refuse sampler settings under which a fit could not be checked (ValueError), before any work.

    One chain is accepted: every diagnostic but R-hat is defined, and the verdict says R-hat is not
    available. Fewer draws than the diagnostics need are refused rather than failing after the fit."""
    from inference.sampling import SAMPLERS

    if settings.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{settings.sampler}'; choose from {', '.join(SAMPLERS)}")
    for name in ("chains", "cores", "prior_draws"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1 (got {getattr(settings, name)})")
    if settings.tune < 0:
        raise ValueError(f"tune must be at least 0 (got {settings.tune})")
    if not 0 < settings.target_accept < 1:
        raise ValueError(f"target_accept must be between 0 and 1 (got {settings.target_accept})")
    if settings.mass_matrix not in MASS_MATRICES:
        raise ValueError(f"mass_matrix must be one of {MASS_MATRICES} (got '{settings.mass_matrix}')")
    if settings.draws < MIN_DRAWS_PER_CHAIN:
        raise ValueError(
            f"draws = {settings.draws} per chain is too few to check the fit: effective sample size, MCSE and R-hat need "
            f"at least {MIN_DRAWS_PER_CHAIN} draws per chain; use --draws {MIN_DRAWS_PER_CHAIN} or more (1000 or more for results)"
        )
    if settings.draws * settings.chains < MIN_DRAWS_TOTAL:
        raise ValueError(
            f"{settings.chains} chain(s) x {settings.draws} draws = {settings.draws * settings.chains} draws in all is too few for "
            f"leave-one-out (PSIS fits a tail to the largest importance ratios); use at least {MIN_DRAWS_TOTAL} draws in all"
        )


def check_priors(priors: dict | None, specs: list, design: TrialDesign) -> None:
    """Refuse overrides for a model not being fitted, or of a prior the model does not have (ValueError)."""
    names = {s.name: s for s in specs}
    for name, overrides in (priors or {}).items():
        if name not in names:
            raise ValueError(f"priors given for model '{name}', which is not among the models fitted ({', '.join(names)})")
        try:
            resolved = resolve(names[name].default_priors(design), overrides)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"priors for model '{name}': {exc.args[0] if exc.args else exc}") from exc
        for key in overrides:
            try:
                check_prior(key, resolved[key])
            except ValueError as exc:
                raise ValueError(f"priors for model '{name}': {exc}") from exc


def check_contrasts(contrasts, design: TrialDesign) -> list[Contrast]:
    """The contrasts asked for (texts, diagnostics/contrasts.py SYNTAX; one text or a list; None: none), parsed against
    the trial's arms, sizes and doses; ContrastError (a ValueError) naming the contrast, the arms and the syntax."""
    if contrasts is None:
        return []
    texts = [contrasts] if isinstance(contrasts, str) else list(contrasts)
    return parse_contrasts(texts, design.meta, arm_sizes(design.meta, design.arm_idx))


def saved_contrasts(results: Path, contrasts) -> list[Contrast]:
    """The contrasts asked for of a saved results folder, parsed against the arms, sizes and doses of the dataset saved
    with its fits, before any work (FileNotFoundError for a folder without fits, ContrastError)."""
    from data.schema import meta_of
    from diagnostics.summary import dataset_arms

    names = saved_names(results) if results.is_dir() else []
    if not names:
        raise FileNotFoundError(f"{results} holds no fitted model (no <model>/idata.nc): run fit.py first")
    ds = saved_dataset(load_fit(results / names[0] / "idata.nc", complete=False))
    meta = meta_of(ds)
    texts = [contrasts] if isinstance(contrasts, str) else list(contrasts)
    return parse_contrasts(texts, meta, arm_sizes(meta, dataset_arms(ds)))


def saved_sensitivity_options(results: Path, ice, deltas, threshold, remission_cutoff, seed, weeks=None,
                              option_names: dict[str, str] | None = None) -> SensitivityOptions:
    """The sensitivity options for a saved results folder, read and checked before any work (FileNotFoundError, DatasetError,
    ValueError for weeks the saved trial does not schedule after baseline).

    deltas, threshold  as checked by diagnostics.sensitivity_analyses.check_sensitivity_options
    weeks              the weeks to report (None: the defaults), checked against the saved dataset's schedule
    option_names       how the caller spells the options (check_sensitivity_weeks)"""
    names = saved_names(results) if results.is_dir() else []
    if not names:
        raise FileNotFoundError(f"{results} holds no fitted model (no <model>/idata.nc): run fit.py first")
    first = load_fit(results / names[0] / "idata.nc", complete=False)
    ds = saved_dataset(first)
    source = str(ds.attrs.get("source") or provenance(first).get("data_source") or "")  # the folder the data were read from
    weeks = check_sensitivity_weeks(weeks, ds["week"].values, source, option_names)
    table = read_ice(ice, ds, source)
    return SensitivityOptions(table, deltas, threshold, remission_cutoff, seed, weeks)
