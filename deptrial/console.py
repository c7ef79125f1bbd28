"""What a run shows: the data summary (printed, and stamped into every fit), a model's sensitivity analyses and its
contrasts (each contrast asked for, the dose trend and P(each arm is best) at the end of treatment) in a few lines,
and the posterior summary table (summary.csv). The per-model estimates (every active arm's effects) and the
convergence verdict print themselves (diagnostics.estimates.format_estimates, Verdict.text).
"""

from __future__ import annotations

import numpy as np

from diagnostics.contrasts import contrast_sentences
from diagnostics.convergence import one_chain_quiet
from models.design import TrialDesign


def sensitivity_text(result) -> str:
    """One model's sensitivity analyses in a few lines, for the console."""
    lines = []
    table = result.tables.get("sensitivity")
    if table is not None:
        weeks = getattr(result, "report_weeks", (result.end_week,))
        for week in weeks:
            end = table[table["week"] == week]
            groups = end.groupby("contrast", sort=False) if "contrast" in end else [(None, end)]  # several active arms: a line each
            for contrast, rows in groups:
                lines.append(f"sensitivity at week {week}{f', {contrast}' if contrast else ''}: " + "; ".join(_strategy_parts(rows)))
        if "contrast" in table or len(weeks) > 1:
            lines.extend(f"tipping point: {message}" for message in result.tipping_messages)
        else:
            lines.append(f"tipping point: {result.tipping_message}")
    prior = result.tables.get("prior_sensitivity")
    if prior is not None and len(prior) and prior["prior_sensitive"].any():
        lines.append("prior-sensitive: " + ", ".join(f"{r.effect} ({r.diagnosis})" for r in prior[prior["prior_sensitive"]].itertuples(index=False)))
    for table_name, why in result.notes.items():
        if table_name != "tipping_point":
            lines.append(f"no {table_name}.csv: {why}")
    return "\n".join(lines)


def _strategy_parts(rows) -> list[str]:
    """'J2R -1.24 (P(benefit) 0.96; information anchored 0.93)': a strategy's mean and P(benefit), with the information-
    anchored P(benefit) (the same mean, the MAR analysis' variance) when sensitivity.csv has it."""
    parts, anchored = [], {}
    if "variance" in rows:
        anchored = {r.strategy: r.p_below_0 for r in rows.itertuples(index=False) if r.variance == "information_anchored"}
        rows = rows[rows["variance"] != "information_anchored"]
    for r in rows.itertuples(index=False):
        extra = f"; information anchored {anchored[r.strategy]:.2f}" if r.strategy in anchored else ""
        parts.append(f"{r.strategy} {r.mean:.2f} (P(benefit) {r.p_below_0:.2f}{extra})")
    return parts


def contrasts_text(table, n_arms: int) -> str:
    """A model's key contrasts (diagnostics.contrasts.contrast_sentences) for the console: the contrasts asked for and
    the dose trend at the end of treatment, and P(each arm is best) when there are three arms or more ('' when none)."""
    if table is None or table.empty:
        return ""
    lines = contrast_sentences(table)
    if n_arms < 3:  # two arms: P(best) is the P(benefit) of the estimates
        lines = [line for line in lines if not line.startswith("P(best")]
    return "\n".join(lines)


def summary_table(idata):
    """ArviZ summary of the population-level parameters (summary.csv)."""
    import arviz as az

    names = [v for v in idata.posterior.data_vars if v not in ("participant_raw", "participant_effects") and not v.startswith("marker_missing") and not v.startswith("marker_censored")]
    with one_chain_quiet():
        return az.summary(idata, var_names=names, hdi_prob=0.94)


def data_summary(design: TrialDesign) -> dict:
    """Participants by arm, sites, observed visits by week and the baseline biomarker values: run.json and the fits' provenance.
    'arms' names the control arm and the active arm (a list of them for a trial of several active arms)."""
    meta, arm_idx = design.meta, np.asarray(design.arm_idx)
    active = list(meta.treatment_arms)
    info = {
        "participants": int(design.n_participants),
        # the active arms in declared order, then the control arm
        "by_arm": {**{a: int((arm_idx == i).sum()) for i, a in enumerate(active, start=1)}, meta.control_arm: int((arm_idx == 0).sum())},
        "arms": {"control": meta.control_arm, "treatment": active[0] if len(active) == 1 else active},
        "sites": len(design.sites),
        "visits_observed": len(design.y),
        "observed_by_week": {int(w): int((design.obs_week == w).sum()) for w in design.weeks},
    }
    if design.baseline is not None:
        b = design.baseline
        info["baseline_markers_imputed"] = int(b.n_missing)
        info["baseline_markers_below_lod"] = int(b.n_censored)
        info["baseline_markers_observed"] = int(np.sum(~b.missing & ~b.censored))
    return info


def info_text(info: dict) -> str:
    """`data_summary` in a line or two, for the console."""
    arms = ", ".join(f"{k} {v}" for k, v in info["by_arm"].items())
    weeks = ", ".join(f"w{w}: {n}" for w, n in info["observed_by_week"].items())
    text = f"data: {info['participants']} participants ({arms}), {info['sites']} sites, {info['visits_observed']} visits ({weeks})"
    if "baseline_markers_imputed" in info:
        text += (
            f"\nbaseline biomarker values: {info['baseline_markers_observed']} observed, "
            f"{info['baseline_markers_imputed']} missing (imputed in the model), {info['baseline_markers_below_lod']} below detection limit (censored)"
        )
    return text
