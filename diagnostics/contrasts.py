"""Contrasts between the arms of a trial, from a score model's posterior draws (contrasts.csv).

Every score model (the trajectory family and the MMRM) has 'placebo_change' (dims week: the control arm's
mean change from baseline at each scheduled week) and 'nac_effect' (dims active_arm, week: each active arm
minus the control arm), so per draw the mean change from baseline of arm a at week w is

    m[a, w] = placebo_change[w]                     (the control arm)
    m[a, w] = placebo_change[w] + nac_effect[a, w]  (active arm a)

the Bayesian analogue of least-squares means. From these, at every scheduled post-baseline week:

    arm_mean    m[a, w], each arm (control first)
    vs_control  each active arm - the control arm (nac_effect itself, as in estimates.csv)
    contrast    a user-defined linear contrast sum_a c_a m[a, w] (`parse_contrast`: "high - low",
                "pooled active - placebo", "mean active - placebo", "0.5*low + 0.5*high - placebo")
    dose_trend  the least-squares slope of the arm means on the declared doses ([arms.dose] of dataset.toml),
                points per dose unit: the contrast with weights (d_a - mean d) / sum_b (d_b - mean d)^2
and at the primary visit (the end of treatment)
    p_best      the posterior probability that each arm has the lowest mean change (lower scores are better)

Lower scores are better: a contrast below 0 favours the arms of positive weight. Each row states its
weights and its estimand in the ICH E9(R1) attributes (models.effects.ESTIMAND_COLUMNS), like estimates.csv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from data.meta import DatasetMeta
from models.effects import DEFAULT_MCID, ESTIMAND_COLUMNS, effect_row, estimand, hdi_names

CONTRASTS_FILE = "contrasts.csv"
KINDS = ("arm_mean", "vs_control", "contrast", "dose_trend", "p_best")
DOSE_TREND = "dose trend"
POOLED, EQUAL = "pooled active", "mean active"  # the active arms weighted by their size, or equally
SYNTAX = ('"high - low" (one arm against another), "pooled active - placebo" (the active arms weighted by their number '
          'of participants), "mean active - placebo" (the active arms weighted equally), "0.5*low + 0.5*high - placebo" '
          '(weights; those added and those subtracted must sum to the same value, so that the contrast is a difference '
          'of means) or "dose trend" (the slope of the arm means per dose unit; needs [arms.dose] in dataset.toml)')
TOLERANCE = 1e-9

_NUMBER = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*(\d+(?:\.\d*)?|\.\d+))?\s*\*?\s*")


class ContrastError(ValueError):
    """A contrast that cannot be computed (unknown arm, weights that do not make a difference of means, no doses)."""


@dataclass(frozen=True)
class Contrast:
    """One linear contrast of the arm means: a weight per arm (control first, as meta.arms)."""

    label: str  # as written (spaces normalised), or generated ('low - placebo', 'dose trend')
    kind: str  # 'vs_control', 'contrast' or 'dose_trend'
    weights: tuple[tuple[str, float], ...]  # (arm, weight) for every arm
    note: str = ""  # how grouped weights were chosen (pooled or equal), or the doses of a trend

    def weight_of(self, arm: str) -> float:
        return dict(self.weights).get(arm, 0.0)

    def weights_text(self) -> str:
        """The nonzero weights, e.g. 'placebo -1, low +0.5, high +0.5' (and how they were chosen)."""
        text = ", ".join(f"{a} {w:+.4g}" for a, w in self.weights if w != 0)
        return f"{text} ({self.note})" if self.note else text


def _fail(text: str, why: str, arms) -> ContrastError:
    return ContrastError(f"contrast '{text}': {why}. The arms are {', '.join(arms)} ({arms[0]} the control); "
                         f"write a contrast as {SYNTAX}")


def dose_trend(arms, doses: dict[str, float], label: str = DOSE_TREND) -> Contrast:
    """The least-squares slope of the arm means on dose as a contrast (ContrastError without distinct doses)."""
    arms = list(arms)
    if not doses:
        raise _fail(label, "the dataset declares no doses (no [arms.dose] table in dataset.toml), so there is no dose trend; "
                    "add [arms.dose] with a number for every arm (e.g. placebo = 0, low = 50, high = 100) or leave out 'dose trend'", arms)
    d = np.asarray([float(doses[a]) for a in arms])
    sxx = float(np.sum((d - d.mean()) ** 2))
    if sxx <= 0:
        raise _fail(label, "every arm has the same dose in [arms.dose], so a slope on dose is not defined", arms)
    weights = (d - d.mean()) / sxx
    return Contrast(label, "dose_trend", tuple(zip(arms, weights.tolist())),
                    "least-squares slope on dose: " + ", ".join(f"{a} {doses[a]:g}" for a in arms))


def vs_control(arms) -> list[Contrast]:
    """Each active arm - the control arm (arms: control first)."""
    control = arms[0]
    return [Contrast(f"{a} - {control}", "vs_control", tuple((b, 1.0 if b == a else -1.0 if b == control else 0.0) for b in arms))
            for a in arms[1:]]


def parse_contrast(text: str, arms, sizes: dict[str, int] | None = None, doses: dict[str, float] | None = None) -> Contrast:
    """A contrast written as text (SYNTAX) as weights on `arms` (control first; labels are case-sensitive).

    sizes  participants per arm (for 'pooled active'); doses  [arms.dose] (for 'dose trend').
    Raises ContrastError naming the contrast, what is wrong, the arms and the syntax."""
    arms = [str(a) for a in arms]
    raw = " ".join(str(text).split())
    if not raw:
        raise _fail(raw, "it is empty", arms)
    if raw.lower() in (DOSE_TREND, "dose-trend"):
        return dose_trend(arms, doses or {}, DOSE_TREND)
    active = arms[1:]
    names = sorted([*arms, POOLED, EQUAL], key=len, reverse=True)
    weights = dict.fromkeys(arms, 0.0)
    notes: list[str] = []
    pos, first = 0, True

    def name_at(i: int) -> str | None:
        for name in names:
            grouped = name in (POOLED, EQUAL) and name not in arms
            found = raw[i:i + len(name)].lower() == name if grouped else raw.startswith(name, i)
            end = i + len(name)
            if found and (end == len(raw) or raw[end] in " +-*"):
                return name
        return None

    while pos < len(raw):
        sign = 1.0
        if raw[pos] in "+-":
            sign = -1.0 if raw[pos] == "-" else 1.0
            pos += 1
            while pos < len(raw) and raw[pos] == " ":
                pos += 1
            if pos == len(raw):
                raise _fail(raw, f"nothing follows the last '{'-' if sign < 0 else '+'}'", arms)
        elif not first:
            raise _fail(raw, f"expected + or - before '{raw[pos:]}'", arms)
        first = False
        coef = 1.0
        name = name_at(pos)
        if name is None:
            number = _NUMBER.match(raw, pos)
            if number:
                num, den = float(number.group(1)), float(number.group(2)) if number.group(2) else 1.0
                if den == 0:
                    raise _fail(raw, f"a weight divides by zero ('{number.group(0).strip()}')", arms)
                coef, pos = num / den, number.end()
                name = name_at(pos)
        if name is None:
            token = re.split(r"\s+[+-]\s+|[+*\s]", raw[pos:].strip(), maxsplit=1)[0] if raw[pos:].strip() else ""
            why = f"unknown arm '{token}'" if token and token[0] not in "+-" else "a weight without an arm"
            raise _fail(raw, why, arms)
        pos += len(name)
        while pos < len(raw) and raw[pos] in " *":
            if raw[pos] == "*":
                raise _fail(raw, f"write a weight before its arm ('2*{name}'), not after it", arms)
            pos += 1
        if name in arms:
            weights[name] += sign * coef
            continue
        if name == POOLED:
            if sizes is None:
                raise _fail(raw, "'pooled active' weights the active arms by their number of participants, which are not known here", arms)
            total = float(sum(sizes[a] for a in active))
            share = {a: sizes[a] / total for a in active}
            notes.append("pooled active: the active arms weighted by their number of participants ("
                         + ", ".join(f"{a} {sizes[a]}" for a in active) + ")")
        else:
            share = {a: 1.0 / len(active) for a in active}
            notes.append("mean active: the active arms weighted equally")
        for a, s in share.items():
            weights[a] += sign * coef * s
    added = sum(w for w in weights.values() if w > 0)
    taken = -sum(w for w in weights.values() if w < 0)
    if added <= TOLERANCE and taken <= TOLERANCE:
        raise _fail(raw, "its weights cancel: it compares nothing", arms)
    if abs(added - taken) > TOLERANCE * max(1.0, added, taken):
        raise _fail(raw, f"the weights added sum to {added:.4g} and those subtracted to {taken:.4g}; they must sum to the same "
                    "value for the contrast to be a difference of means (e.g. '0.5*low + 0.5*high - placebo')", arms)
    weights = {a: (0.0 if abs(w) <= TOLERANCE else w) for a, w in weights.items()}
    return Contrast(raw, "contrast", tuple(weights.items()), "; ".join(dict.fromkeys(notes)))


def arm_sizes(meta: DatasetMeta, arm_idx) -> dict[str, int]:
    """Participants per arm (arm_idx: per participant, 0 the control arm, a the a-th active arm)."""
    arm_idx = np.asarray(arm_idx, dtype=int)
    return {a: int((arm_idx == i).sum()) for i, a in enumerate(meta.arms)}


def parse_contrasts(texts, meta: DatasetMeta, sizes: dict[str, int] | None = None) -> list[Contrast]:
    """Every contrast of `texts` (ContrastError for the first that cannot be computed; a repeat is refused too)."""
    out: list[Contrast] = []
    for text in texts or ():
        c = parse_contrast(text, meta.arms, sizes, meta.doses)
        if any(c.label == o.label for o in out):
            raise ContrastError(f"contrast '{c.label}' is given twice")
        out.append(c)
    return out


# ---------------------------------------------------------------- posterior draws


def arm_means(posterior: xr.Dataset, meta: DatasetMeta) -> xr.DataArray | None:
    """Mean change from baseline per arm (control first) and scheduled post-baseline week, dims (chain, draw, arm, week);
    None for a model without 'placebo_change' and 'nac_effect' by week (no arm term, or another outcome)."""
    if "placebo_change" not in posterior or "nac_effect" not in posterior:
        return None
    control, effect = posterior["placebo_change"], posterior["nac_effect"]
    if "week" not in control.dims or "week" not in effect.dims:
        return None
    if "active_arm" not in effect.dims:  # a two-arm fit written before the active_arm dim
        effect = effect.expand_dims(active_arm=list(meta.treatment_arms))
    weeks = [w for w in control["week"].values if int(w) != int(meta.weeks[0])]
    control, effect = control.sel(week=weeks), effect.sel(week=weeks)
    active = (control + effect).rename(active_arm="arm")
    means = xr.concat([control.expand_dims(arm=[meta.control_arm]), active], dim="arm")
    means = means.assign_coords(arm=[str(a) for a in means["arm"].values])
    return means.transpose("chain", "draw", "arm", "week")


def contrast_draws(means: xr.DataArray, contrast: Contrast) -> xr.DataArray:
    """sum_a c_a m[a, w] per draw, dims (chain, draw, week)."""
    w = xr.DataArray([contrast.weight_of(str(a)) for a in means["arm"].values], dims="arm", coords={"arm": means["arm"]})
    return (means * w).sum("arm")


def primary_week(meta: DatasetMeta, weeks) -> int:
    """The primary visit: the end of treatment when scheduled after baseline, else the last week."""
    weeks = [int(w) for w in weeks]
    return int(meta.treatment_end) if int(meta.treatment_end) in weeks else max(weeks)


def p_best(means: xr.DataArray, week: int) -> dict[str, float]:
    """P(each arm has the lowest mean change from baseline at `week`): lower scores are better. Sums to 1."""
    at = means.sel(week=week).transpose("chain", "draw", "arm").values.reshape(-1, means.sizes["arm"])
    best = np.argmin(at, axis=1)
    return {str(a): float(np.mean(best == i)) for i, a in enumerate(means["arm"].values)}


def best_indicator(means: xr.DataArray, week: int) -> np.ndarray:
    """Per draw (chain, draw, arm): 1.0 where the arm has the lowest mean change at `week`."""
    at = means.sel(week=week).transpose("chain", "draw", "arm").values
    return (np.argmin(at, axis=-1)[..., None] == np.arange(at.shape[-1])).astype(float)


# ---------------------------------------------------------------- the table


COLUMNS = ["kind", "contrast", "week", "unit", "mean", "sd", *hdi_names(), "p_below_0", "mcse_mean"]


def _estimand(meta: DatasetMeta, week: int, summary: str) -> dict[str, str]:
    """A row's estimand: population and intercurrent events as every score row of estimates.csv, the variable the
    change from baseline at the week, and `summary`."""
    base = estimand(meta, week, "difference_change", arm=meta.treatment_arms[0])
    return {**base, "summary": summary}


def contrasts_table(idata, meta: DatasetMeta, contrasts=(), mcid: float = DEFAULT_MCID, change_scores: bool = False,
                    dose: bool = True) -> pd.DataFrame | None:
    """contrasts.csv of a fit (None when the model has no per-arm means): per arm the mean change from baseline, each
    active arm - control, each of `contrasts` (parsed by `parse_contrast`), the dose trend when the data declare doses
    (`dose`) and it is not among `contrasts`, at every scheduled post-baseline week, then P(best) at the primary visit.

    change_scores  the model's outcome is the change from baseline (the MMRM): the vs_control rows state the estimand
                   of its estimates.csv rows."""
    post = idata.posterior if hasattr(idata, "posterior") else idata
    means = arm_means(post, meta)
    if means is None:
        return None
    arms = [str(a) for a in means["arm"].values]
    weeks = [int(w) for w in means["week"].values]
    label = meta.outcome_label
    unit = f"{label} points"
    mcid_col = f"p_below_-{mcid:g}"
    rows, stated = [], []

    def add(kind, name, draws, week, with_mcid, summary, weights="", row_unit=unit):
        """One row; summary: the estimand's summary (the rest as every score row), or the whole estimand as a dict."""
        row = effect_row(name, draws, mcid if with_mcid else None, week=week)
        rows.append({"kind": kind, "contrast": row.pop("quantity"), "unit": row_unit, **row, "weights": weights})
        stated.append(summary if isinstance(summary, dict) else _estimand(meta, week, summary))

    for a in arms:
        within = "within one arm, not a randomised comparison"
        for w in weeks:
            add("arm_mean", a, means.sel(arm=a, week=w).values, w, False, f"mean change from baseline in the {a} arm ({within})")
    effect = post["nac_effect"]
    for c in vs_control(arms):
        a = c.label.split(" - ")[0]
        for w in weeks:
            draws = effect.sel(active_arm=a, week=w).values if "active_arm" in effect.dims else effect.sel(week=w).values
            add("vs_control", c.label, draws, w, True, estimand(meta, w, "difference_change" if change_scores else "difference", arm=a),
                c.weights_text())
    chosen = list(contrasts)
    if dose and meta.doses and not any(c.kind == "dose_trend" for c in chosen):
        try:
            chosen.append(dose_trend(arms, meta.doses))
        except ContrastError:  # every arm at the same dose: no trend to report
            pass
    for c in chosen:
        draws = contrast_draws(means, c)
        if c.kind == "dose_trend":
            summary = (f"least-squares slope of the arms' mean change from baseline on dose, {label} points per dose unit "
                       f"({c.note.removeprefix('least-squares slope on dose: ')}; each arm's mean weighted equally)")
            for w in weeks:
                add("dose_trend", c.label, draws.sel(week=w).values, w, False, summary, c.weights_text(), f"{label} points per dose unit")
        else:
            summary = f"linear contrast of the arms' mean change from baseline, weights {c.weights_text()}"
            for w in weeks:
                add(c.kind, c.label, draws.sel(week=w).values, w, True, summary, c.weights_text())
    week = primary_week(meta, weeks)
    best = best_indicator(means, week)
    for i, a in enumerate(arms):
        add("p_best", a, best[..., i], week, False,
            f"posterior probability that the {a} arm has the lowest mean change from baseline of the {len(arms)} arms "
            f"({', '.join(arms)}) at week {week} (lower scores are better)", row_unit="probability")
        rows[-1].update({"sd": np.nan, hdi_names()[0]: np.nan, hdi_names()[1]: np.nan, "p_below_0": np.nan})
    table = pd.DataFrame(rows)
    if mcid_col not in table:
        table[mcid_col] = np.nan
    table = table[[*COLUMNS, mcid_col, "weights"]]
    return pd.concat([table, pd.DataFrame(stated, columns=list(ESTIMAND_COLUMNS))], axis=1)


def key_rows(table: pd.DataFrame | None) -> pd.DataFrame:
    """The rows a run summary shows: the user contrasts and the dose trend at the primary visit, and P(best)."""
    if table is None or table.empty:
        return pd.DataFrame(columns=table.columns if table is not None else COLUMNS)
    week = int(table.loc[table["kind"] == "p_best", "week"].iloc[0]) if (table["kind"] == "p_best").any() else None
    keep = table["kind"].isin(["contrast", "dose_trend", "p_best"]) & (table["week"] == week)
    return table[keep].reset_index(drop=True)


def contrast_sentences(table: pd.DataFrame | None, mcid: float | None = None) -> list[str]:
    """The key rows (`key_rows`) in plain lines: each contrast at the primary visit, then P(best)."""
    rows = key_rows(table)
    if rows.empty:
        return []
    lo, hi = hdi_names()
    week = int(rows["week"].iloc[0])
    mcid_col = next((c for c in rows.columns if c.startswith("p_below_-")), None)
    out = []
    for r in rows[rows["kind"] != "p_best"].to_dict("records"):
        num = "{:.2f}" if r["kind"] != "dose_trend" else "{:.3g}"  # points, or points per dose unit
        text = (f"{r['contrast']} at week {week}: {num.format(r['mean'])} {r['unit']} (94% HDI {num.format(r[lo])} to "
                f"{num.format(r[hi])}), P(< 0) {r['p_below_0']:.2f}")
        if mcid_col and pd.notna(r.get(mcid_col)):
            text += f", P(< -{mcid_col.removeprefix('p_below_-')}) {r[mcid_col]:.2f}"
        out.append(text)
    best = rows[rows["kind"] == "p_best"]
    if len(best):
        out.append(f"P(best arm at week {week}, lowest mean change from baseline): "
                   + ", ".join(f"{r.contrast} {r.mean:.2f}" for r in best.itertuples(index=False)))
    return out


def read_contrasts(path) -> pd.DataFrame | None:
    """A saved contrasts.csv (None when there is none)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return None
    table = pd.read_csv(path, keep_default_na=True)
    table["weights"] = table["weights"].astype("string").fillna("").astype(str)
    return table
