"""The estimates table: the trial's questions answered in outcome points, from any fitted model.

Rows are produced for whichever effect summaries a model defines (see each model's
Deterministics), so new models get a table without new code here; a model's own extra rows
(ModelSpec.extra_estimates) are appended by `model_estimates`. Each row is a
models.effects.effect_row (lower scores are better: 'p_below_0' is P(NAC - placebo < 0)).
"""

from __future__ import annotations

import arviz as az
import pandas as pd

from data.meta import DatasetMeta
from models.effects import DEFAULT_MCID, effect_row


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


def model_estimates(idata: az.InferenceData, spec, design, mcid: float = DEFAULT_MCID) -> pd.DataFrame:
    """The generic rows plus the model's own (spec: a models.registry.ModelSpec)."""
    table = estimates_table(idata, design.meta, mcid=mcid)
    if spec.extra_estimates is not None:
        table = pd.concat([table, spec.extra_estimates(idata, design, mcid)], ignore_index=True)
    return table


def format_estimates(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no effect summaries in this model)"
    shown = table.drop(columns=["week", "marker", "unit", "mcse_mean"], errors="ignore").copy()
    with pd.option_context("display.width", 200, "display.max_colwidth", 70, "display.float_format", "{:.2f}".format):
        return shown.to_string(index=False)
