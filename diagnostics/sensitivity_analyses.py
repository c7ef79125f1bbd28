"""One fit's sensitivity analyses (fit.py / diagnose.py --sensitivity): their options and the one check of
those options, the four tables a model supports and why it has no others, and the tables read back from a
results folder.

Files, for each model that supports them (written by diagnostics.outputs.write_outputs):
    <model>/sensitivity.csv, tipping_point.csv, responders.csv, prior_sensitivity.csv,
    <model>/figures/tipping_point.png
The engines are diagnostics/sensitivity.py (reference-based strategies, delta adjustment, tipping point),
diagnostics/responders.py and diagnostics/prior_sensitivity.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd

from data.ice import IceTable
from inference.idata_io import provenance

from .ppc import REMISSION_CUTOFF
from .prior_sensitivity import prior_sensitivity_table
from .responders import responder_table, scored_model
from .sensitivity import (
    CONTRAST_COLUMN,
    DECISION_THRESHOLD,
    DELTA_KIND_COLUMN,
    DELTA_KINDS,
    arm_strategy_effects,
    default_deltas,
    imputed_changes,
    model_pieces,
    sensitivity_table,
    supported_model,
    tipping_plot,
    tipping_point,
)

SENSITIVITY_TABLES = ("sensitivity", "tipping_point", "responders", "prior_sensitivity")  # <model>/<name>.csv
TIPPING_FIGURE = "tipping_point"  # <model>/figures/tipping_point.png
# how the options are spelled where they are given: the Python keywords (deptrial.fit_trial, rediagnose,
# sensitivity) by default; deptrial.cli passes the command-line flags
OPTION_NAMES = {"sensitivity": "sensitivity=True", "ice": "ice", "deltas": "deltas", "threshold": "tipping_threshold",
                "weeks": "sensitivity_weeks"}


@dataclass(frozen=True)
class SensitivityOptions:
    """How the sensitivity analyses are run: intercurrent events, delta rows, decision threshold, remission, seed, weeks.

    ice               validated intercurrent events (data.ice.load_ice), or None: every participant follows the
                      strategy of the analysis after their last observed visit
    deltas            delta rows of sensitivity.csv in outcome points (None: diagnostics.sensitivity.default_deltas)
    threshold         the decision threshold of the tipping point: P(benefit) below it, benefit is not concluded
    remission_cutoff  remission: score at or below this
    seed              the responder imputations' seed (None: each fit's own seed)
    weeks             the post-baseline visits the analyses report, checked against the trial (`check_sensitivity_weeks`):
                      sensitivity.csv's rows, a tipping point per active arm and week, the report and the submission
                      sensitivity table. None: sensitivity.csv at every post-baseline week, the rest at the end of treatment
    """

    ice: IceTable | None = None
    deltas: tuple[float, ...] | None = None
    threshold: float = DECISION_THRESHOLD
    remission_cutoff: float = REMISSION_CUTOFF
    seed: int | None = None
    weeks: tuple[int, ...] | None = None


def check_sensitivity_options(deltas=None, threshold=None, *, sensitivity: bool = True, ice=None, weeks=None,
                              names: dict[str, str] | None = None) -> tuple[tuple[float, ...] | None, float]:
    """The one check of the sensitivity analyses' options, before any fit or work: (deltas as floats, threshold).

    deltas       delta rows, outcome points (None: the defaults); numbers or texts of numbers
    threshold    the tipping point's decision threshold (None: DECISION_THRESHOLD)
    sensitivity  whether the analyses are asked for: without them, `ice`, `deltas`, `threshold` or `weeks` given is
                 refused
    weeks        the weeks to report (None: the defaults); whole numbers, at least one, each once
                 (`sensitivity_weeks` reads them; `check_sensitivity_weeks` checks them against the trial)
    names        how the caller spells the options in its messages (default OPTION_NAMES, the Python keywords;
                 deptrial.cli.CLI_NAMES for the command lines)
    Raises ValueError saying what is wrong, why, and how to fix it.
    """
    names = {**OPTION_NAMES, **(names or {})}
    if not sensitivity:
        given = [names[key] for key, value in (("ice", ice), ("deltas", deltas), ("threshold", threshold), ("weeks", weeks))
                 if value is not None]
        if given:
            one = len(given) == 1
            raise ValueError(f"{' and '.join(given)} {'applies' if one else 'apply'} only with {names['sensitivity']}: "
                             f"{'it is an option' if one else 'they are options'} of the sensitivity analyses; pass "
                             f"{names['sensitivity']} or leave {'it' if one else 'them'} out")
    if deltas is not None:
        shown = ",".join(str(x) for x in deltas) if isinstance(deltas, (list, tuple)) else repr(deltas)
        try:
            deltas = tuple(float(x) for x in deltas)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{names['deltas']} must be numbers of outcome points, e.g. 2,4,6 (got {shown})") from exc
        bad = [x for x in deltas if not np.isfinite(x) or x < 0]
        if bad or not deltas:
            raise ValueError(f"{names['deltas']} must be finite, at least 0 and at least one (got {list(deltas)}): outcome points "
                             "added to the imputed scores after dropout, e.g. 2,4,6")
    threshold = float(DECISION_THRESHOLD if threshold is None else threshold)
    if not 0.5 <= threshold < 1:
        raise ValueError(f"{names['threshold']}: the tipping-point threshold is a posterior probability of benefit in [0.5, 1), "
                         f"e.g. 0.975 (got {threshold:g})")
    sensitivity_weeks(weeks, names)
    return deltas, threshold


def sensitivity_weeks(weeks, names: dict[str, str] | None = None) -> tuple[int, ...] | None:
    """The weeks the sensitivity analyses report as whole numbers (None stays None: the defaults); ValueError for
    anything else than at least one whole number, each once. Whether the trial has them: `check_sensitivity_weeks`."""
    if weeks is None:
        return None
    names = {**OPTION_NAMES, **(names or {})}
    items = [weeks] if isinstance(weeks, (int, float, str, np.integer)) else list(weeks)
    out = []
    for x in items:
        try:
            value = float(x)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value) or value != round(value) or isinstance(x, bool):
            raise ValueError(f"{names['weeks']} must be weeks of the trial's schedule, whole numbers such as 12 16 (got {x!r})")
        out.append(int(round(value)))
    if not out:
        raise ValueError(f"{names['weeks']} needs at least one week, e.g. 12 16")
    twice = sorted({w for w in out if out.count(w) > 1})
    if twice:
        raise ValueError(f"{names['weeks']} lists week {', '.join(map(str, twice))} more than once; give each week once")
    return tuple(out)


def check_sensitivity_weeks(weeks, design_weeks, where: str = "", names: dict[str, str] | None = None) -> tuple[int, ...] | None:
    """The weeks the sensitivity analyses report (`sensitivity_weeks`), each a post-baseline scheduled visit of the
    trial (`design_weeks`, the design's weeks, baseline first), in the order of the schedule; ValueError listing the
    weeks that are not and the valid ones. `where` names the trial in the message (its data source)."""
    weeks = sensitivity_weeks(weeks, names)
    if weeks is None:
        return None
    names = {**OPTION_NAMES, **(names or {})}
    scheduled = [int(w) for w in design_weeks]
    valid = scheduled[1:]
    bad = [w for w in weeks if w not in valid]
    if bad:
        if len(bad) == 1:
            what = f"week {bad[0]} is {'the baseline visit, not' if bad[0] == scheduled[0] else 'not'}"
        else:
            what = f"weeks {', '.join(map(str, bad))} are not"
        raise ValueError(f"{names['weeks']}: {what} a post-baseline scheduled visit of the trial{f' ({where})' if where else ''}; "
                         f"the sensitivity analyses can report weeks {', '.join(map(str, valid))}")
    return tuple(sorted(weeks, key=valid.index))


@dataclass
class ModelSensitivity:
    """One model's sensitivity analyses: the tables written to <model>/<name>.csv and what the report shows."""

    name: str
    end_week: int  # the end of treatment: the week of the responders in the report (and of the rest by default)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # SENSITIVITY_TABLES computed for this model
    tipping_message: str = ""  # the tipping point in words: tipping_messages joined by "; "
    tipping_figure: bytes | None = None  # every active arm's tipping points at every reported week in one figure
    # per active arm (in order) and reported week, the tipping points in words: the additive one's message, then the
    # multiplicative one's, joined by "; "
    tipping_messages: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)  # table -> why this model has none
    saved: bool = False  # read back from the results folder (diagnose.py without --sensitivity), not recomputed
    timings: dict = field(default_factory=dict)
    # the draws behind the "sensitivity" table (not of a saved one), for the submission tables (diagnostics.csr_tables):
    effects: dict = field(default_factory=dict)  # (active arm, strategy) -> diagnostics.sensitivity.StrategyEffect
    deltas: tuple[float, ...] = ()  # the delta rows' deltas
    tipping_points: tuple = ()  # per kind, active arm and reported week, diagnostics.sensitivity.TippingPoint (no figure)
    ice_source: str = ""  # the intercurrent-event table the strategies followed ('' for none)
    weeks: tuple[int, ...] = ()  # the weeks reported (tipping points, report, submission table); () for end_week
    row_weeks: tuple[int, ...] | None = None  # the weeks of sensitivity.csv's rows (None: every post-baseline week)

    @property
    def report_weeks(self) -> tuple[int, ...]:
        """The weeks the report and the console show: `weeks`, else the end of treatment."""
        return tuple(self.weeks) or (int(self.end_week),)


def unsupported(idata: az.InferenceData, design, model: str) -> dict[str, str]:
    """Why a fit has no strategy / tipping-point table or no responder table ({} when it has both): the engines' own refusals."""
    notes = {}
    try:
        supported_model(idata, design, model)
    except ValueError as exc:
        notes["sensitivity"] = notes["tipping_point"] = str(exc)
    try:
        scored_model(idata, model)
    except ValueError as exc:
        notes["responders"] = str(exc)
    return notes


def tipping_frame(tp) -> pd.DataFrame:
    """The tipping point's grid with what it found, repeated on every row: a first column `delta_kind` (`additive`:
    `delta` is the points added; `multiplicative`: `delta` is the factor on the imputed change from baseline), then
    the grid and strategy, arms, threshold, imputed_share, imputed_change (multiplicative: the imputed participants'
    mean imputed change from baseline, points; empty for additive), tipping_delta (the grid value nearest MAR at which
    benefit is no longer concluded: the smallest delta, or the largest factor; empty if none), tipping_exact (the exact
    flip point, in the same unit) and tipping_message; on a trial with several active arms a first column `contrast`
    ("<arm> - <control>") before it."""
    frame = tp.table.assign(strategy=tp.strategy, arms=tp.arms, threshold=tp.threshold, imputed_share=tp.share,
                            imputed_change=tp.change if tp.change is not None else np.nan,
                            tipping_delta=tp.delta if tp.delta is not None else np.nan,
                            tipping_exact=tp.exact if tp.exact is not None else np.nan, tipping_message=tp.message)
    frame.insert(0, DELTA_KIND_COLUMN, tp.kind)
    if tp.n_active > 1:
        frame.insert(0, CONTRAST_COLUMN, tp.contrast)
    return frame


def tipping_messages(tps) -> tuple[str, ...]:
    """Per active arm and reported week (in the order of their first tipping point), the messages of its tipping points
    (additive, then multiplicative) joined by "; "."""
    by: dict[tuple, list[str]] = {}
    for tp in sorted(tps, key=lambda tp: DELTA_KINDS.index(tp.kind)):
        by.setdefault((tp.arm, int(tp.week)), []).append(tp.message)
    return tuple("; ".join(dict.fromkeys(messages)) for messages in by.values())


def model_sensitivity(name: str, idata: az.InferenceData, design, options: SensitivityOptions | None = None) -> ModelSensitivity:
    """The four sensitivity tables of one fit, those its model supports, and notes for the others; the strategies,
    the tipping point and the responders for every active arm against the control arm.

    idata    the fit, whole (deptrial.load_fit reads a saved one back with its log-likelihood)
    design   the TrialDesign it was fitted to
    """
    options = options or SensitivityOptions()
    model = str(provenance(idata).get("model") or name)
    result = ModelSensitivity(name, int(design.meta.treatment_end))
    result.notes = unsupported(idata, design, model)
    t0 = time.perf_counter()
    if "sensitivity" not in result.notes:
        pieces = model_pieces(idata, design, model)  # d and Sigma once for both tables
        result.effects = arm_strategy_effects(pieces, design, ice=options.ice)  # the strategies' draws, once
        result.deltas = default_deltas(design) if options.deltas is None else tuple(float(x) for x in options.deltas)
        result.ice_source = options.ice.source if options.ice is not None and len(options.ice) else ""
        result.row_weeks = tuple(options.weeks) if options.weeks is not None else None
        result.weeks = result.row_weeks or (result.end_week,)
        result.tables["sensitivity"] = sensitivity_table(idata, design, deltas=result.deltas, ice=options.ice, model=model, pieces=pieces,
                                                         effects=result.effects, weeks=result.row_weeks)
        changes = imputed_changes(idata, design, pieces, options.ice)  # the multiplicative delta's imputed changes, once
        tps = [tipping_point(idata, design, week=week, threshold=options.threshold, ice=options.ice, model=model, pieces=pieces,
                             arm=arm, plot=False, kind=kind, changes=changes)
               for kind in DELTA_KINDS for arm in pieces.arms for week in result.weeks]
        result.tables["tipping_point"] = pd.concat([tipping_frame(tp) for tp in tps], ignore_index=True)
        result.tipping_points = tuple(tps)
        result.tipping_messages = tipping_messages(tps)
        result.tipping_message = "; ".join(result.tipping_messages)
        result.tipping_figure = tipping_plot(tps, design)
    t1 = time.perf_counter()
    if "responders" not in result.notes:
        seed = options.seed if options.seed is not None else int(provenance(idata).get("seed", 1))
        result.tables["responders"] = responder_table(idata, design, remission_cutoff=options.remission_cutoff, seed=seed, model=model)
    t2 = time.perf_counter()
    result.tables["prior_sensitivity"] = prior_sensitivity_table(idata)
    result.timings = {"strategies_s": t1 - t0, "responders_s": t2 - t1, "prior_sensitivity_s": time.perf_counter() - t2}
    return result


def _read_table(path: Path) -> pd.DataFrame:
    """A saved table; a file with no columns (a table with no rows written by hand or truncated) reads as empty."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def saved_sensitivity(folder: str | Path, idatas: dict[str, az.InferenceData]) -> dict[str, ModelSensitivity]:
    """The sensitivity tables a results folder already holds (from an earlier --sensitivity), read back for the report."""
    from data.schema import meta_of
    from inference.storage import DATA_GROUP, saved_dataset
    from models import build_design

    folder = Path(folder)
    out = {}
    for name, idata in idatas.items():
        files = {t: folder / name / f"{t}.csv" for t in SENSITIVITY_TABLES}
        if not any(f.is_file() for f in files.values()) or DATA_GROUP not in idata.groups():
            continue
        ds = saved_dataset(idata)
        result = ModelSensitivity(name, int(meta_of(ds).treatment_end), saved=True)
        result.tables = {t: _read_table(f) for t, f in files.items() if f.is_file()}
        result.notes = {t: n for t, n in unsupported(idata, build_design(ds), str(provenance(idata).get("model") or name)).items()
                        if t not in result.tables}
        tp = result.tables.get("tipping_point")
        if tp is not None and len(tp) and "tipping_message" in tp:
            keys = [c for c in (CONTRAST_COLUMN, "week") if c in tp]
            per_arm = tp.groupby(keys, sort=False) if keys else [(None, tp)]
            # each kind's message once (a file without `delta_kind` has one message per arm and week)
            result.tipping_messages = tuple("; ".join(dict.fromkeys(str(m) for m in rows["tipping_message"])) for _, rows in per_arm)
            result.tipping_message = "; ".join(result.tipping_messages)
            if "week" in tp:
                result.weeks = tuple(int(w) for w in dict.fromkeys(tp["week"]))
        rows = result.tables.get("sensitivity")
        if rows is not None and len(rows) and "week" in rows:
            result.row_weeks = tuple(int(w) for w in dict.fromkeys(rows["week"]))
        png = folder / name / "figures" / f"{TIPPING_FIGURE}.png"
        result.tipping_figure = png.read_bytes() if png.is_file() else None
        out[name] = result
    return out
