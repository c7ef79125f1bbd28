"""Prior overrides from a TOML file, and the sceptical and enthusiastic presets for the treatment effect.

A prior file names priors by model and prior name, one table each (docs/models.md#prior-sensitivity):

    preset = "sceptical"            # optional: "sceptical" or "enthusiastic" (the treatment effect)

    [headline.nac_change]           # [<model>.<prior name>]
    dist = "Normal"                 # optional: without it the default's family is kept
    mu = 0.0                        # the family's parameters, numbers
    sigma = 3.0
    reason = "half the default SD"  # optional, recorded with the prior in the saved fit

    [all.residual_sd]               # every fitted model that uses a prior of this name
    sigma = 5.0

`read_prior_file` checks everything a file can get wrong without the trial (TOML syntax, layout,
model names, families, parameter names and values) and `model_priors` the rest once the models and
the trial are known (prior names, the family's kind, the merged parameters), before any fit. Every
error is a `PriorFileError` (a ValueError: exit code 2 on the command line) naming the file, the table
and the fix. `model_priors` returns the per-model overrides `deptrial.fit_trial` passes to the builders.

Precedence, lowest first: the model's default, the preset, an [all.<prior>] table, a [<model>.<prior>]
table. A table replaces what is below it for that prior (no merging with the preset or [all]); with
the default's family it keeps the default's other parameters.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Sequence

from .design import TrialDesign
from .effects import DEFAULT_MCID
from .priors import Prior, check
from .registry import REGISTRY, ModelSpec
from .trajectory import FAMILY as TRAJECTORY_FAMILY
from .trajectory import priors_used

ALL = "all"  # the table name that applies to every fitted model using the prior
PRESETS = ("sceptical", "enthusiastic")
PRESET_TAIL = 0.10  # sceptical: P(|effect| > MCID) = 10% a priori (two-sided)
PRESET_Z = NormalDist().inv_cdf(1 - PRESET_TAIL / 2)  # 1.6449: the preset SD is MCID / PRESET_Z

# The treatment - control difference in outcome points, per model: what a preset sets. Models absent
# here have no such prior (null: no arm; the biomarker models: their effect is on the log-marker scale,
# where an MCID in outcome points means nothing). A test requires every registered model to be in one
# of the two, so a new model needs a decision.
TREATMENT_EFFECT_PRIORS = {
    "treatment": "nac_change",
    "treatment_curved": "nac_change",
    "headline": "nac_change",
    "moderation": "nac_change",
    "mmrm": "nac_visit_effect",
    "mmrm_retrieved": "nac_visit_effect",
    "mediation": "direct_effect",
}
NO_TREATMENT_EFFECT_IN_POINTS = ("null", "biomarker_change", "biomarker_change_median")

# What a prior of each kind is: a real location, a positive scale, sum-to-zero offsets, a correlation matrix
REAL, POSITIVE, ZEROSUM, CORRELATION = "real-valued", "positive", "sum-to-zero", "correlation-matrix"


@dataclass(frozen=True)
class Family:
    """A prior family a file may name: its parameters (one of `alternatives` exactly), which must be positive, its kind."""

    alternatives: tuple[tuple[str, ...], ...]
    positive: tuple[str, ...]
    kind: str

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for alt in self.alternatives for p in alt))

    def usage(self, name: str) -> str:
        return " or ".join(f"{name}(" + ", ".join(alt) + ")" for alt in self.alternatives)


# The families a prior may take (PyMC's names and parameters). diagnostics/prior_sensitivity.py computes
# the log density of each (a test keeps the two lists equal).
FAMILIES = {
    "Normal": Family((("mu", "sigma"),), ("sigma",), REAL),
    "StudentT": Family((("nu", "mu", "sigma"),), ("nu", "sigma"), REAL),
    "Cauchy": Family((("alpha", "beta"),), ("beta",), REAL),
    "Laplace": Family((("mu", "b"),), ("b",), REAL),
    "HalfNormal": Family((("sigma",),), ("sigma",), POSITIVE),
    "HalfStudentT": Family((("nu", "sigma"),), ("nu", "sigma"), POSITIVE),
    "HalfCauchy": Family((("beta",),), ("beta",), POSITIVE),
    "Exponential": Family((("lam",),), ("lam",), POSITIVE),
    "Gamma": Family((("alpha", "beta"), ("mu", "sigma")), ("alpha", "beta", "mu", "sigma"), POSITIVE),
    "InverseGamma": Family((("alpha", "beta"),), ("alpha", "beta"), POSITIVE),
    "LogNormal": Family((("mu", "sigma"),), ("sigma",), POSITIVE),
    "ZeroSumNormal": Family((("sigma",),), ("sigma",), ZEROSUM),
    "LKJ": Family((("eta",),), ("eta",), CORRELATION),
}
KEYS = ("dist", "reason")  # the keys of a prior table besides the parameters
_ANY_PARAMS = tuple(dict.fromkeys(p for f in FAMILIES.values() for p in f.params))
_ALWAYS_POSITIVE = tuple(p for p in _ANY_PARAMS if all(p in f.positive for f in FAMILIES.values() if p in f.params))


class PriorFileError(ValueError):
    """A prior file or preset that cannot be used: the message names the file, the table and the fix."""


@dataclass(frozen=True)
class PriorEntry:
    """One [<model>.<prior>] table as read: family (None: the default's), parameters, reason."""

    table: str
    dist: str | None
    params: dict
    reason: str | None = None


@dataclass(frozen=True)
class PriorFile:
    """A prior file, read and checked as far as it can be without the trial: tables by model (or 'all') and prior."""

    path: Path
    tables: dict[str, dict[str, PriorEntry]] = field(default_factory=dict)
    preset: str | None = None


# ---------------------------------------------------------------- reading


def read_prior_file(path: str | Path) -> PriorFile:
    """Read and check a prior file (PriorFileError on anything wrong; see the module doc for the layout)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PriorFileError(
            f"{path}: no such file (--priors takes a TOML file of [<model>.<prior>] tables; docs/models.md#prior-sensitivity)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PriorFileError(f"{path}: cannot be read as UTF-8 text ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PriorFileError(
            f"{path}: not valid TOML: {exc}. Each prior is a table [<model>.<prior>] with numbers (sigma = 3.0) "
            'and quoted text (dist = "Normal")'
        ) from exc
    preset = None
    tables: dict[str, dict[str, PriorEntry]] = {}
    for key, value in raw.items():
        if key == "preset":
            preset = _preset_name(value, f"{path}: preset = {value!r}")
            continue
        if not isinstance(value, dict):
            raise PriorFileError(
                f"{path}: top-level key '{key}' = {value!r}: the only top-level key is preset = \"sceptical\" or \"enthusiastic\"; "
                "priors go in tables [<model>.<prior>]"
            )
        if key != ALL and key not in REGISTRY:
            raise PriorFileError(f"{path}: [{key}]: unknown model '{key}'{_closest(key, [*REGISTRY, ALL])}; "
                                 f"the models are {', '.join(REGISTRY)}, and [{ALL}.<prior>] applies to every fitted model")
        tables[key] = {}
        for prior, entry in value.items():
            where = f"{path}: [{key}.{prior}]"
            if not isinstance(entry, dict):
                raise PriorFileError(f"{path}: [{key}] {prior} = {entry!r}: a prior is a table of its own: write [{key}.{prior}] "
                                     "with its parameters on the lines below (e.g. sigma = 3.0)")
            tables[key][prior] = _entry(entry, where, f"{key}.{prior}")
    return PriorFile(path=path, tables=tables, preset=preset)


def _entry(table: dict, where: str, name: str) -> PriorEntry:
    dist = table.get("dist")
    if dist is not None:
        if not isinstance(dist, str):
            raise PriorFileError(f"{where}: dist = {dist!r}: the family is quoted text, e.g. dist = \"Normal\"")
        if dist not in FAMILIES:
            raise PriorFileError(f"{where}: unknown distribution family '{dist}'{_closest(dist, FAMILIES)}; "
                                 f"the families are {', '.join(FAMILIES)}")
    reason = table.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise PriorFileError(f"{where}: reason = {reason!r}: the reason is quoted text")
    params = {}
    for key, value in table.items():
        if key in KEYS:
            continue
        if isinstance(value, dict):
            raise PriorFileError(f"{where}: {key} is a table; write the parameters in [{name}] itself, one per line (sigma = 3.0)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PriorFileError(f"{where}: {key} = {value!r} is not a number; write it unquoted, e.g. {key} = 3.0")
        if not math.isfinite(value):
            raise PriorFileError(f"{where}: {key} = {value!r} is not a finite number")
        params[key] = float(value)
    if dist is None and not params:
        raise PriorFileError(f"{where}: sets nothing; give the parameters to change (e.g. sigma = 3.0) and optionally dist")
    if dist is not None:
        _check_names(dist, params, where, complete=False)
    else:  # the family is the default's, known with the models (model_priors); the signs that hold in every family now
        for key, value in params.items():
            if key in _ALWAYS_POSITIVE and not value > 0:
                raise PriorFileError(f"{where}: {key} = {value:g}: {key} must be positive (> 0)")
    return PriorEntry(table=name, dist=dist, params=params, reason=reason)


def _check_names(dist: str, params: dict, where: str, *, complete: bool) -> None:
    """Parameter names of `dist` (and, when `complete`, a full set of them) and their signs."""
    family = FAMILIES[dist]
    unknown = [k for k in params if k not in family.params]
    if unknown:
        k = unknown[0]
        raise PriorFileError(f"{where}: {dist} has no parameter '{k}'{_closest(k, family.params)}; it takes {family.usage(dist)}")
    if len(family.alternatives) > 1:
        chosen = [alt for alt in family.alternatives if set(params) & set(alt)]
        if len(chosen) > 1:
            raise PriorFileError(f"{where}: {dist} takes {family.usage(dist)}, not a mix of them")
    for k, v in params.items():
        if k in family.positive and not v > 0:
            raise PriorFileError(f"{where}: {k} = {v:g}: {dist}'s {k} must be positive (> 0)")
    if complete and not any(set(params) == set(alt) for alt in family.alternatives):
        missing = [k for k in min(family.alternatives, key=lambda alt: len(set(alt) - set(params))) if k not in params]
        raise PriorFileError(f"{where}: {dist} needs {', '.join(missing)} as well: it takes {family.usage(dist)}")


def _preset_name(value, where: str) -> str:
    if not isinstance(value, str) or value not in PRESETS:
        raise PriorFileError(f"{where}: unknown preset{_closest(str(value), PRESETS)}; the presets are {', '.join(PRESETS)}")
    return value


def _closest(word: str, choices) -> str:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{found[0]}'?)" if found else ""


# ---------------------------------------------------------------- per model, with the trial


def used_priors(spec: ModelSpec, design: TrialDesign, likelihood: str = "normal") -> dict[str, Prior]:
    """The default priors a model uses with this likelihood (those a file may name for it)."""
    defaults = spec.default_priors(design)
    if spec.name in TRAJECTORY_FAMILY:
        switches = TRAJECTORY_FAMILY[spec.name][1]
        return priors_used(defaults, arm=switches.get("arm", False), markers=switches.get("markers", False),
                           nac_moderation=switches.get("nac_moderation", False), curved=switches.get("curved", False),
                           likelihood=likelihood)
    return {k: v for k, v in defaults.items() if k != "student_nu" or likelihood == "student"}


def preset_priors(preset: str, model: str, design: TrialDesign, mcid: float) -> dict[str, dict]:
    """The override a preset makes for one model: {prior name: {dist, params, reason}}, or {} without a treatment-effect prior.

    sceptical     Normal(0, MCID / 1.645): P(|effect| > MCID) = 10%, so P(benefit > MCID) = 5%
    enthusiastic  Normal(-MCID, MCID / 1.645): centred on a benefit of one MCID (lower scores are better)

    The trajectory models' nac_change holds, for each active arm, the difference gained during treatment
    and the change of the difference over follow-up: the enthusiastic mean is -MCID for the first and 0
    for the second (the benefit is kept, not doubled, by the last follow-up), the same for every active
    arm (a prior on a block with an active_arm dim applies to each arm)."""
    _preset_name(preset, "prior preset")
    if not (isinstance(mcid, (int, float)) and math.isfinite(mcid) and mcid > 0):
        raise PriorFileError(f"prior preset '{preset}': the MCID must be a positive number of outcome points (got {mcid!r}); set --mcid")
    name = TREATMENT_EFFECT_PRIORS.get(model)
    if name is None:
        return {}
    sd = float(mcid) / PRESET_Z
    label = design.meta.outcome_label
    if preset == "sceptical":
        mu: float | list[float] = 0.0
        reason = (f"sceptical preset: centred on no difference, SD MCID / {PRESET_Z:.4g} = {sd:.3g} {label} points, "
                  f"so P(|effect| > MCID {mcid:g}) = {PRESET_TAIL:.0%}")
    else:
        mu = -float(mcid)
        reason = (f"enthusiastic preset: centred on a benefit of one MCID ({-mcid:g} {label} points), "
                  f"SD MCID / {PRESET_Z:.4g} = {sd:.3g} (the sceptical preset's)")
        if name == "nac_change" and design.has_followup:
            mu = [-float(mcid), 0.0]  # per phase: the benefit is gained by the end of treatment and kept over follow-up
            reason += "; the follow-up change is centred on 0 (the benefit is kept)"
    return {name: {"dist": "Normal", "params": {"mu": mu, "sigma": sd}, "reason": reason}}


def model_priors(
    specs: Sequence[ModelSpec],
    design: TrialDesign,
    priors: PriorFile | dict | str | Path | None = None,
    *,
    preset: str | None = None,
    mcid: float = DEFAULT_MCID,
    likelihood: str = "normal",
) -> dict[str, dict]:
    """The per-model prior overrides for `deptrial.fit_trial`: {model: {prior: {dist, params, reason}}}.

    priors  a prior file (path or `read_prior_file`'s result), or the Python API's dict
            {model or 'all': {prior: {dist, params[, reason]}}}, or None
    preset  'sceptical' or 'enthusiastic' for every fitted model's treatment-effect prior
            (TREATMENT_EFFECT_PRIORS); overrides a file's preset key. Named priors win over it.

    A file is checked in full here (PriorFileError naming the file and table); a dict's entries are
    passed through for deptrial.preflight.check_priors, after expanding 'all'.
    """
    if isinstance(priors, (str, Path)):
        priors = read_prior_file(priors)
    if isinstance(priors, PriorFile):
        preset = preset or priors.preset
        explicit = _file_overrides(priors, specs, design, likelihood)
    else:
        explicit = _dict_overrides(priors or {}, specs, design, likelihood)
    out: dict[str, dict] = {}
    if preset is not None:
        targets = [s.name for s in specs if s.name in TREATMENT_EFFECT_PRIORS]
        if not targets:
            raise PriorFileError(
                f"prior preset '{preset}' sets the treatment effect of {', '.join(TREATMENT_EFFECT_PRIORS)}; none of the models "
                f"fitted ({', '.join(s.name for s in specs)}) has one in outcome points"
            )
        for spec in specs:
            chosen = preset_priors(preset, spec.name, design, mcid)
            if chosen:
                out[spec.name] = chosen
    for model, entries in explicit.items():
        out.setdefault(model, {}).update(entries)
    return out


def _dict_overrides(priors: dict, specs, design, likelihood) -> dict[str, dict]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in priors.items() if k != ALL}
    for name, value in (priors.get(ALL) or {}).items():
        targets = [s.name for s in specs if name in used_priors(s, design, likelihood)]
        if not targets:
            raise ValueError(f"priors['{ALL}']['{name}']: none of the models fitted uses a prior '{name}'"
                             f"{_closest(name, _names(specs, design, likelihood))}")
        for model in targets:
            out.setdefault(model, {}).setdefault(name, value)  # a model's own entry wins
    return out


def _names(specs, design, likelihood) -> list[str]:
    return sorted({k for s in specs for k in used_priors(s, design, likelihood)})


def _file_overrides(pf: PriorFile, specs, design, likelihood) -> dict[str, dict]:
    fitted = {s.name: s for s in specs}
    used = {s.name: used_priors(s, design, likelihood) for s in specs}
    chosen: dict[str, dict[str, PriorEntry]] = {}
    for name, entry in pf.tables.get(ALL, {}).items():
        targets = [m for m in fitted if name in used[m]]
        if not targets:
            raise PriorFileError(f"{pf.path}: [{entry.table}]: none of the models fitted ({', '.join(fitted)}) uses a prior "
                                 f"'{name}'{_closest(name, _names(specs, design, likelihood))}; their priors: "
                                 f"{', '.join(_names(specs, design, likelihood))}")
        for model in targets:
            chosen.setdefault(model, {})[name] = entry
    for model, entries in pf.tables.items():
        if model == ALL:
            continue
        if model not in fitted:
            raise PriorFileError(f"{pf.path}: [{model}.*]: model '{model}' is not among the models fitted ({', '.join(fitted)}); "
                                 f"fit it (--model ... {model}) or remove its tables")
        for name, entry in entries.items():
            if name not in used[model]:
                unused = name in fitted[model].default_priors(design)
                why = "does not use a prior" if unused else "has no prior"
                raise PriorFileError(f"{pf.path}: [{entry.table}]: model '{model}' {why} '{name}'"
                                     f"{'' if unused else _closest(name, used[model])}; its priors: {', '.join(used[model])}")
            chosen.setdefault(model, {})[name] = entry  # a model's own table wins over [all]
    out: dict[str, dict] = {}
    for model, entries in chosen.items():
        for name, entry in entries.items():
            out.setdefault(model, {})[name] = _resolved(pf.path, entry, model, name, used[model][name])
    return out


def _resolved(path: Path, entry: PriorEntry, model: str, name: str, default: Prior) -> dict:
    """The entry merged into the model's default prior, checked: {dist, params, reason}."""
    where = f"{path}: [{entry.table}]" + (f" (for model '{model}')" if entry.table.startswith(f"{ALL}.") else "")
    kind = FAMILIES[default.dist].kind if default.dist in FAMILIES else None
    dist = entry.dist or default.dist
    if dist not in FAMILIES:
        raise PriorFileError(f"{where}: the default {default.describe()} is not a family a file can change; give dist as well")
    if kind is not None and FAMILIES[dist].kind != kind:
        fits = [f for f, fam in FAMILIES.items() if fam.kind == kind]
        raise PriorFileError(f"{where}: '{name}' needs a {kind} family and {dist} is {FAMILIES[dist].kind}; choose one of {', '.join(fits)}")
    params = dict(entry.params)
    if dist == default.dist:  # keep the default's other parameters, unless the entry switches parameterisation (Gamma)
        merged = {**default.params, **entry.params}
        if any(set(merged) <= set(alt) for alt in FAMILIES[dist].alternatives):
            params = merged
    _check_names(dist, entry.params, where, complete=False)
    _check_names(dist, params, where, complete=True)
    prior = Prior(dist, params, entry.reason or f"{path.name} [{entry.table}]")
    try:
        check(name, prior)
    except ValueError as exc:
        raise PriorFileError(f"{where}: {exc}") from exc
    return {"dist": prior.dist, "params": prior.params, "reason": prior.reason}
