"""The estimates table: the trial's questions answered in outcome points, from any fitted model.

Lower scores are better on the depression scales handled here, so 'NAC better' is
P(NAC - placebo < 0) and 'benefit > MCID' is P(NAC - placebo < -MCID).
Rows are produced for whichever effect summaries a model defines (see each model's
Deterministics), so new models get a table without new code here.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd

from data.meta import DatasetMeta

HDI_PROB = 0.94
DEFAULT_MCID = 2.0  # MADRS points: common minimal clinically important drug-placebo difference


def effect_row(quantity, draws: np.ndarray, mcid: float | None, **labels) -> dict:
    draws = np.asarray(draws).reshape(draws.shape[0], -1) if draws.ndim > 1 else draws[None, :]
    flat = draws.ravel()
    lo, hi = az.hdi(flat, hdi_prob=HDI_PROB)
    ess = float(az.ess(draws)) if draws.shape[0] > 1 else float("nan")
    row = {
        "quantity": quantity,
        **labels,
        "mean": flat.mean(),
        "sd": flat.std(ddof=1),
        f"hdi_{(1 - HDI_PROB) / 2:.0%}": lo,
        f"hdi_{1 - (1 - HDI_PROB) / 2:.0%}": hi,
        "p_below_0": (flat < 0).mean(),
        "mcse_mean": flat.std(ddof=1) / np.sqrt(ess) if ess == ess and ess > 0 else float("nan"),
    }
    if mcid is not None:
        row[f"p_below_-{mcid:g}"] = (flat < -mcid).mean()
    return row


def estimates_table(idata: az.InferenceData, meta: DatasetMeta, mcid: float = DEFAULT_MCID) -> pd.DataFrame:
    post = idata.posterior
    label = meta.outcome_label
    rows = []
    if "nac_effect" in post:
        weeks = [meta.treatment_end] + ([meta.last_week] if meta.last_week > meta.treatment_end else [])
        for w in weeks:
            rows.append(
                effect_row(
                    f"{meta.treatment_arm} - {meta.control_arm} mean {label} at week {w}",
                    post["nac_effect"].sel(week=w).values,
                    mcid,
                    week=w,
                    marker="",
                    unit=f"{label} points",
                )
            )
    if "placebo_change" in post:
        w = meta.treatment_end
        rows.append(effect_row(f"{meta.control_arm} change from baseline at week {w}", post["placebo_change"].sel(week=w).values, None, week=w, marker="", unit=f"{label} points"))
    units = meta.marker_units
    for var, text in (
        ("moderation_per_doubling", f"change in {label} by week {meta.treatment_end} per doubling of baseline"),
        ("prognostic_per_doubling", f"baseline {label} per doubling of"),
    ):
        if var in post:
            for mk in post[var]["marker"].values:
                rows.append(
                    effect_row(f"{text} {mk}", post[var].sel(marker=mk).values, None, week=meta.treatment_end if var.startswith("mod") else 0,
                         marker=str(mk), unit=f"{label} points per doubling ({units.get(str(mk), '')})")
                )
    table = pd.DataFrame(rows)
    return table


def format_estimates(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no effect summaries in this model)"
    shown = table.drop(columns=["week", "marker", "unit", "mcse_mean"], errors="ignore").copy()
    with pd.option_context("display.width", 200, "display.max_colwidth", 70, "display.float_format", "{:.2f}".format):
        return shown.to_string(index=False)
