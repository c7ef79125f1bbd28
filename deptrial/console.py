"""What a run shows: the data summary (printed, and stamped into every fit), a model's sensitivity analyses in a
few lines, and the posterior summary table (summary.csv). The per-model estimates and the convergence verdict
print themselves (diagnostics.estimates.format_estimates, Verdict.text).
"""

from __future__ import annotations

import numpy as np

from diagnostics.convergence import one_chain_quiet
from models.design import TrialDesign


def sensitivity_text(result) -> str:
    """One model's sensitivity analyses in a few lines, for the console."""
    lines = []
    table = result.tables.get("sensitivity")
    if table is not None:
        end = table[table["week"] == result.end_week]
        parts = [f"{r.strategy} {r.mean:.2f} (P(benefit) {r.p_below_0:.2f})" for r in end.itertuples(index=False)]
        lines.append(f"sensitivity at week {result.end_week}: " + "; ".join(parts))
        lines.append(f"tipping point: {result.tipping_message}")
    prior = result.tables.get("prior_sensitivity")
    if prior is not None and len(prior) and prior["prior_sensitive"].any():
        lines.append("prior-sensitive: " + ", ".join(f"{r.effect} ({r.diagnosis})" for r in prior[prior["prior_sensitive"]].itertuples(index=False)))
    for table_name, why in result.notes.items():
        if table_name != "tipping_point":
            lines.append(f"no {table_name}.csv: {why}")
    return "\n".join(lines)


def summary_table(idata):
    """ArviZ summary of the population-level parameters (summary.csv)."""
    import arviz as az

    names = [v for v in idata.posterior.data_vars if v not in ("participant_raw", "participant_effects") and not v.startswith("marker_missing") and not v.startswith("marker_censored")]
    with one_chain_quiet():
        return az.summary(idata, var_names=names, hdi_prob=0.94)


def data_summary(design: TrialDesign) -> dict:
    """Participants by arm, sites, observed visits by week and the baseline biomarker values: run.json and the fits' provenance."""
    treated = design.treated.astype(bool)
    info = {
        "participants": int(design.n_participants),
        "by_arm": {design.meta.treatment_arm: int(treated.sum()), design.meta.control_arm: int((~treated).sum())},
        "arms": {"control": design.meta.control_arm, "treatment": design.meta.treatment_arm},
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
