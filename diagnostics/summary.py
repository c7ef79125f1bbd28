"""The answer first: what each fitted model says about the trial's questions, as tables the report draws.

For every fitted model (the MMRM and the biomarker models included):

- each active arm - control difference of its estimates table at each reported week (the rows that
  carry P(benefit > MCID)): posterior mean, 94% HDI, P(benefit), P(benefit > MCID);
- when the model has the effect summaries 'placebo_change' and 'nac_effect' by week: its fitted
  mean score in every arm at every scheduled week (the observed mean baseline score plus the modelled
  change, with 94% HDIs), beside the observed means of those seen at each visit;
- its contrasts (diagnostics/contrasts.py, contrasts.csv): every contrast at every visit and P(each arm
  is best) at the end of treatment;
- its biomarker rows (the estimates that name a marker);
- the estimand of every row of its estimates table, in the ICH E9(R1) attributes (population,
  variable, intercurrent events, summary: models/effects.py `estimand`), when the table states them.

Each comes with one plain sentence. Lower scores are better, so benefit is a negative difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from models.effects import ESTIMAND_COLUMNS, HDI_PROB

from .contrasts import contrast_sentences

LO, HI = f"hdi_{(1 - HDI_PROB) / 2:.0%}", f"hdi_{1 - (1 - HDI_PROB) / 2:.0%}"


@dataclass
class Answer:
    """One model's answer: the tables of its summary figures and their sentences."""

    model: str
    description: str
    differences: pd.DataFrame  # quantity, arm, week, mean, lo, hi, p_benefit, p_mcid
    mcid: float | None
    trajectory: pd.DataFrame | None  # arm, week, mean, lo, hi (fitted mean score)
    markers: pd.DataFrame | None  # quantity, marker, unit, mean, lo, hi
    sentences: dict[str, str]
    estimands: pd.DataFrame | None = None  # quantity, population, variable, intercurrent_events, summary
    contrasts: pd.DataFrame | None = None  # the model's contrasts.csv (diagnostics/contrasts.py)


def dataset_arms(dataset: xr.Dataset) -> np.ndarray:
    """Each participant's arm index (0 the control arm, a the a-th active arm) of a validated dataset."""
    if "arm_index" in dataset:
        return np.asarray(dataset["arm_index"].values, dtype=int)
    return np.asarray(dataset["treated"].values, dtype=int)  # a dataset saved with a two-arm fit before arm_index


def observed_means(dataset: xr.Dataset, labels: tuple[str, ...]) -> pd.DataFrame:
    """Mean observed score by arm and scheduled week, over the participants seen at that visit (labels: every arm,
    the control first)."""
    score = dataset["score"].values
    arm_index = dataset_arms(dataset)
    rows = []
    for a, arm in enumerate(labels):
        mask = arm_index == a
        for j, w in enumerate(dataset["week"].values):
            seen = score[mask, j][~np.isnan(score[mask, j])]
            rows.append({"arm": arm, "week": int(w), "mean": float(seen.mean()) if len(seen) else float("nan"), "n": int(len(seen))})
    return pd.DataFrame(rows)


def baseline_mean(dataset: xr.Dataset) -> float:
    """Mean observed score at the first scheduled week (every participant has it): the fitted trajectories' anchor."""
    return float(np.nanmean(dataset["score"].values[:, 0]))


def observed_means_of(index) -> pd.DataFrame:
    """The same table from a visit-score fit's observations (a diagnostics.ppc.ObsIndex), when no dataset is at hand."""
    arm = index.arm()
    rows = []
    for label in index.arm_labels:
        for w in index.weeks:
            seen = index.y[(arm == label) & (index.week == w)]
            rows.append({"arm": label, "week": int(w), "mean": float(seen.mean()) if len(seen) else float("nan"), "n": int(len(seen))})
    return pd.DataFrame(rows)


def _mcid(estimates: pd.DataFrame) -> tuple[str | None, float | None]:
    cols = [c for c in estimates.columns if c.startswith("p_below_-")]
    return (cols[0], float(cols[0].removeprefix("p_below_-"))) if cols else (None, None)


def row_arm(quantity: str, labels: tuple[str, ...]) -> str:
    """The active arm a row is about ('{arm} - {control} ...'); the only active arm of a two-arm trial; else ''."""
    active = labels[1:]
    for arm in sorted(active, key=len, reverse=True):
        if quantity.startswith(f"{arm} - "):
            return arm
    return active[0] if len(active) == 1 else ""


def differences(estimates: pd.DataFrame | None, labels: tuple[str, ...] = ("control", "treatment")) -> tuple[pd.DataFrame, float | None]:
    """The active arm - control rows of an estimates table (those with P(benefit > MCID)), renamed for plotting, each
    with its arm (labels: every arm, the control first)."""
    empty = pd.DataFrame(columns=["quantity", "arm", "week", "mean", "lo", "hi", "p_benefit", "p_mcid"])
    if estimates is None or estimates.empty:
        return empty, None
    col, mcid = _mcid(estimates)
    if col is None:
        return empty, None
    rows = estimates[estimates[col].notna()]
    out = pd.DataFrame({
        "quantity": rows["quantity"].astype(str), "arm": [row_arm(str(q), tuple(labels)) for q in rows["quantity"]],
        "week": rows.get("week", pd.Series(np.nan, index=rows.index)),
        "mean": rows["mean"], "lo": rows[LO], "hi": rows[HI], "p_benefit": rows["p_below_0"], "p_mcid": rows[col],
    })
    return out.reset_index(drop=True), mcid


def fitted_trajectory(idata: az.InferenceData, baseline_mean: float, labels: tuple[str, ...]) -> pd.DataFrame | None:
    """Fitted mean score by arm and week: observed mean baseline + modelled change (control), + each active arm's effect."""
    post = idata.posterior
    if "placebo_change" not in post or "week" not in post["placebo_change"].dims:
        return None
    control = baseline_mean + post["placebo_change"].stack(sample=("chain", "draw")).transpose("week", "sample").values
    arms = [(labels[0] if "nac_effect" in post else "both arms", control)]
    if "nac_effect" in post:
        effect = post["nac_effect"]
        if "active_arm" not in effect.dims:  # a two-arm fit written before the active_arm dim
            effect = effect.expand_dims(active_arm=[labels[1]])
        for a in effect["active_arm"].values:
            per_arm = effect.sel(active_arm=a).stack(sample=("chain", "draw")).transpose("week", "sample").values
            arms.append((str(a), control + per_arm))
    rows = []
    for arm, draws in arms:
        for w, d in zip(post["week"].values, draws):
            lo, hi = az.hdi(d, hdi_prob=HDI_PROB)
            rows.append({"arm": arm, "week": int(w), "mean": float(d.mean()), "lo": float(lo), "hi": float(hi)})
    return pd.DataFrame(rows)


def marker_rows(estimates: pd.DataFrame | None) -> pd.DataFrame | None:
    if estimates is None or estimates.empty or "marker" not in estimates:
        return None
    rows = estimates[estimates["marker"].astype("string").fillna("") != ""]
    if rows.empty:
        return None
    return pd.DataFrame({
        "quantity": rows["quantity"].astype(str), "marker": rows["marker"].astype(str), "unit": rows.get("unit", "").astype(str),
        "mean": rows["mean"], "lo": rows[LO], "hi": rows[HI],
    }).reset_index(drop=True)


def estimand_rows(estimates: pd.DataFrame | None) -> pd.DataFrame | None:
    """Each row's quantity and estimand (None for a table that does not state them, e.g. from an older run)."""
    if estimates is None or estimates.empty or not set(ESTIMAND_COLUMNS) <= set(estimates.columns):
        return None
    return estimates[["quantity", *ESTIMAND_COLUMNS]].astype(str).reset_index(drop=True)


def _num(x: float) -> str:
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def difference_sentence(diff: pd.DataFrame, mcid: float | None, labels: tuple[str, ...], outcome: str) -> str:
    """One sentence per active arm: its difference from the control arm at each reported week."""
    control, active = labels[0], labels[1:]
    if diff.empty:
        return f"This model has no {' or '.join(f'{a} - {control}' for a in active)} difference (it has no treatment term)."
    sentences = []
    arms = diff["arm"] if "arm" in diff else pd.Series([active[0] if len(active) == 1 else ""] * len(diff), index=diff.index)
    for arm in dict.fromkeys(arms):
        parts = []
        for r in diff[arms == arm].itertuples(index=False):
            week = f"week {int(r.week)}" if pd.notna(r.week) else r.quantity
            text = f"{week}: {_num(r.mean)} points (94% HDI {_num(r.lo)} to {_num(r.hi)}), P(benefit) {r.p_benefit:.2f}"
            if mcid is not None and pd.notna(r.p_mcid):
                text += f", P(benefit > {mcid:g}) {r.p_mcid:.2f}"
            parts.append(text)
        if arm:
            sentences.append(f"{arm} - {control} difference in mean {outcome} (below 0 favours {arm}) at " + "; at ".join(parts) + ".")
        else:
            sentences.append("Other differences: " + "; ".join(parts) + ".")
    return " ".join(sentences)


def trajectory_sentence(traj: pd.DataFrame | None, outcome: str) -> str:
    if traj is None:
        return ""
    return (f"Lines: the model's mean {outcome} by arm with 94% HDI bands (observed mean baseline plus the modelled change, "
            "missing visits assumed missing at random); points: the observed means of those seen at each visit, "
            "which can drift from the lines when those who leave differ from those who stay.")


def marker_sentence(markers: pd.DataFrame | None) -> str:
    if markers is None:
        return ""
    clear = markers[(markers["lo"] > 0) | (markers["hi"] < 0)]
    if clear.empty:
        return "Every biomarker effect's 94% HDI includes 0 (no clear association)."
    parts = [f"{r.quantity}: {_num(r.mean)} ({r.unit}; 94% HDI {_num(r.lo)} to {_num(r.hi)})" for r in clear.itertuples(index=False)]
    rest = len(markers) - len(clear)
    tail = f"; the 94% HDIs of the other {rest} include 0." if rest else "."
    return "94% HDI excludes 0 for " + "; ".join(parts) + tail


def contrasts_sentence(contrasts: pd.DataFrame | None) -> str:
    """What the contrasts figure shows, with P(each arm is best) and the contrasts asked for at the primary visit."""
    if contrasts is None or contrasts.empty:
        return ""
    kinds = set(contrasts["kind"])
    shown = "every active arm - control" + (", every contrast asked for" if "contrast" in kinds else "") + \
        (" and the dose trend" if "dose_trend" in kinds else "")
    lines = contrast_sentences(contrasts)
    return (f"Figure: {shown} at every visit, mean and 94% HDI (below 0 favours the arms added; full table: contrasts.csv). "
            + ". ".join(lines) + ("." if lines else ""))


def answer(model: str, idata: az.InferenceData | None, estimates: pd.DataFrame | None, labels: tuple[str, ...],
           baseline_mean: float, outcome: str, description: str = "", contrasts: pd.DataFrame | None = None) -> Answer:
    """One model's summary tables and sentences (idata None: the estimates alone, no trajectory); labels: every arm,
    the control first; contrasts: the model's contrasts.csv table (diagnostics/contrasts.py), if it has one."""
    diff, mcid = differences(estimates, tuple(labels))
    traj = fitted_trajectory(idata, baseline_mean, labels) if idata is not None else None
    marks = marker_rows(estimates)
    sentences = {"effects": difference_sentence(diff, mcid, labels, outcome)}
    if traj is not None:
        sentences["trajectory"] = trajectory_sentence(traj, outcome)
    if contrasts is not None and not contrasts.empty:
        sentences["contrasts"] = contrasts_sentence(contrasts)
    if marks is not None:
        sentences["markers"] = marker_sentence(marks)
    return Answer(model, description, diff, mcid, traj, marks, sentences, estimand_rows(estimates), contrasts)
