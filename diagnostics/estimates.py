"""The estimates table: the trial's questions answered in outcome points, from any fitted model.

Rows are produced for whichever effect summaries a model defines (see each model's
Deterministics), so new models get a table without new code here; a model's own extra rows
(ModelSpec.extra_estimates) are appended by `model_estimates`. 'nac_effect' (dims active_arm, week)
gives, for each active arm in turn, the rows '{arm} - {control} mean {outcome} at week W' at the end
of treatment and the last follow-up week; then come the control arm's rows and the marker rows. Each
row is a models.effects.effect_row (lower scores are better: 'p_below_0' is P(arm - control < 0)), followed
by its estimand in the ICH E9(R1) attributes (models.effects.ESTIMAND_COLUMNS: population, variable,
intercurrent_events, summary), always the last columns so that readers of the summaries are unaffected.
"""

from __future__ import annotations

import arviz as az
import pandas as pd

from data.meta import DatasetMeta
from models.effects import DEFAULT_MCID, ESTIMAND_COLUMNS, effect_row, with_estimands


def estimates_table(idata: az.InferenceData, meta: DatasetMeta, mcid: float = DEFAULT_MCID, change_scores: bool = False,
                    model: str = "") -> pd.DataFrame:
    """The generic rows; change_scores: the model's outcome is the change from baseline (the MMRM); model: the registered
    model's name, for the estimand wording of a model whose differences are on treatment (models.effects.ON_TREATMENT_MODELS)."""
    post = idata.posterior
    label = meta.outcome_label
    rows, kinds, arms = [], [], []
    if "nac_effect" in post:
        weeks = [meta.treatment_end] + ([meta.last_week] if meta.last_week > meta.treatment_end else [])
        effect = post["nac_effect"]
        active = [str(a) for a in effect["active_arm"].values] if "active_arm" in effect.dims else list(meta.treatment_arms)
        for arm in active:  # every row of one active arm, then the next
            per_arm = effect.sel(active_arm=arm) if "active_arm" in effect.dims else effect
            for w in weeks:
                rows.append(
                    effect_row(
                        f"{arm} - {meta.control_arm} mean {label} at week {w}",
                        per_arm.sel(week=w).values,
                        mcid,
                        week=w,
                        marker="",
                        unit=f"{label} points",
                    )
                )
                kinds.append("difference_change" if change_scores else "difference")
                arms.append(arm)
    if "placebo_change" in post:
        w = meta.treatment_end
        rows.append(effect_row(f"{meta.control_arm} change from baseline at week {w}", post["placebo_change"].sel(week=w).values, None, week=w, marker="", unit=f"{label} points"))
        kinds.append("control_change")
        arms.append(meta.treatment_arms[0])  # a control row's estimand names no active arm; any label will do
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
                kinds.append(var)
                arms.append(meta.treatment_arms[0])
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=list(ESTIMAND_COLUMNS))
    return with_estimands(table, meta, kinds, model=model, arms=arms)


def model_estimates(idata: az.InferenceData, spec, design, mcid: float = DEFAULT_MCID) -> pd.DataFrame:
    """The generic rows plus the model's own (spec: a models.registry.ModelSpec), every row with its estimand."""
    table = estimates_table(idata, design.meta, mcid=mcid, change_scores=spec.scores_change, model=spec.name)
    if spec.extra_estimates is not None:
        extra = spec.extra_estimates(idata, design, mcid)
        if not set(ESTIMAND_COLUMNS) <= set(extra.columns):
            extra = with_estimands(extra, design.meta, [spec.estimand_kind(row) for _, row in extra.iterrows()], model=spec.name)
        table = extra.reset_index(drop=True) if table.empty else pd.concat([table, extra], ignore_index=True)
    return table[[c for c in table.columns if c not in ESTIMAND_COLUMNS] + list(ESTIMAND_COLUMNS)]


def format_estimates(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no effect summaries in this model)"
    shown = table.drop(columns=["week", "marker", "unit", "mcse_mean", *ESTIMAND_COLUMNS], errors="ignore").copy()
    with pd.option_context("display.width", 200, "display.max_colwidth", 70, "display.float_format", "{:.2f}".format):
        return shown.to_string(index=False)
