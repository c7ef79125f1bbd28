"""How an effect is stated: one row of posterior summaries of the draws of one quantity.

Models use `effect_row` to declare the extra rows of their estimates table (ModelSpec.extra_estimates);
diagnostics/estimates.py builds the generic rows (NAC - placebo by week, placebo change, biomarker
effects per doubling) with the same function, so every row has the same columns.

Lower scores are better on the depression scales handled here, so 'NAC better' is
P(NAC - placebo < 0) ('p_below_0') and 'benefit > MCID' is P(NAC - placebo < -MCID).

Every row also states its estimand in the ICH E9(R1) attributes (`estimand`, the one place the wording
lives): population, variable (outcome and visit), intercurrent events (how they are handled) and the
population-level summary, appended as the columns ESTIMAND_COLUMNS after the summaries (`with_estimands`).
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd

HDI_PROB = 0.94
DEFAULT_MCID = 2.0  # MADRS points: common minimal clinically important drug-placebo difference


def hdi_names(prob: float = HDI_PROB) -> tuple[str, str]:
    """The column names of an HDI's bounds, as ArviZ names them: hdi_3% and hdi_97% for 0.94, hdi_2.5% and hdi_97.5% for 0.95."""
    tail = 100.0 * (1.0 - prob) / 2.0
    return f"hdi_{tail:g}%", f"hdi_{100.0 - tail:g}%"


def flat_draws(var) -> np.ndarray:
    """A posterior variable (xarray DataArray with chain and draw dims) as an array (chain * draw, ...)."""
    var = var.transpose("chain", "draw", ...)
    return var.values.reshape((var.sizes["chain"] * var.sizes["draw"],) + var.shape[2:])


def effect_row(quantity, draws: np.ndarray, mcid: float | None, **labels) -> dict:
    """Mean, SD, 94% HDI, P(< 0), Monte Carlo SE of the mean [and P(< -mcid)] of draws (chain x draw, or flat)."""
    draws = np.asarray(draws).reshape(draws.shape[0], -1) if draws.ndim > 1 else draws[None, :]
    flat = draws.ravel()
    lo, hi = az.hdi(flat, hdi_prob=HDI_PROB)
    ess = float(az.ess(draws)) if draws.shape[0] > 1 else float("nan")
    row = {
        "quantity": quantity,
        **labels,
        "mean": flat.mean(),
        "sd": flat.std(ddof=1),
        hdi_names()[0]: lo,
        hdi_names()[1]: hi,
        "p_below_0": (flat < 0).mean(),
        "mcse_mean": flat.std(ddof=1) / np.sqrt(ess) if ess == ess and ess > 0 else float("nan"),
    }
    if mcid is not None:
        row[f"p_below_-{mcid:g}"] = (flat < -mcid).mean()
    return row


# ---------------------------------------------------------------- estimands (ICH E9(R1))

ESTIMAND_COLUMNS = ("population", "variable", "intercurrent_events", "summary")

# What an effect row estimates, by kind. Score models (trajectory family, MMRM):
#   difference            treatment - control mean score at a week (the trajectory models' nac_effect)
#   difference_change     treatment - control mean change from baseline at a week (the MMRM's nac_effect)
#   difference_treatment_policy  the same under the treatment policy for treatment discontinuation (mmrm_retrieved)
#   control_change        the control arm's mean change from baseline
#   difference_at_level   treatment - control at a chosen baseline biomarker level (moderation)
#   moderation_per_doubling, nac_moderation_per_doubling, prognostic_per_doubling   biomarker coefficients
# Biomarker models: ratio_geometric, ratio_median (NAC / control ratio of a marker at the biomarker week);
# mediation: mediation_total, mediation_direct, mediation_indirect, mediator_path, proportion_mediated.
ESTIMAND_KINDS = (
    "difference", "difference_change", "difference_treatment_policy", "control_change", "difference_at_level", "moderation_per_doubling",
    "nac_moderation_per_doubling", "prognostic_per_doubling", "ratio_geometric", "ratio_median",
    "mediation_total", "mediation_direct", "mediation_indirect", "mediator_path", "proportion_mediated",
)
MARKER_KINDS = ("ratio_geometric", "ratio_median")
MEDIATION_KINDS = ("mediation_total", "mediation_direct", "mediation_indirect", "mediator_path", "proportion_mediated")


def phase(week, meta) -> str:
    """Where a week sits in the trial: baseline, during treatment, end of treatment or off-treatment follow-up."""
    week = int(week)
    if week == meta.weeks[0]:
        return "baseline"
    if week == meta.treatment_end:
        return "end of treatment"
    return "off-treatment follow-up" if week > meta.treatment_end else "during treatment"


# models whose arm differences are those had every participant stayed on the randomised treatment (the off-treatment shift
# of the visits after stopping treatment early is a term of the model: models/mmrm_retrieved.py)
ON_TREATMENT_MODELS = ("mmrm_retrieved",)
TREATMENT_POLICY = ("treatment policy: the change whatever happened to the randomised treatment, regardless of treatment "
                    "discontinuation (visits attended after stopping treatment are used as observed); missing post-discontinuation "
                    "visits imputed from retrieved dropouts (missing at random given the arm, the observed scores and being off "
                    "treatment: the off-treatment model estimated from the visits attended after stopping); other missing visits: "
                    "missing at random on treatment")


def _scores_handling(meta, week: int, model: str = "") -> str:
    """How a score model handles intercurrent events at `week`."""
    mar = ("dropout and other missing visits: hypothetical strategy under missing at random (the participant's own "
           "arm's course given their observed scores)")
    if model in ON_TREATMENT_MODELS:
        return ("treatment discontinuation: hypothetical strategy, as if every participant had stayed on the randomised treatment "
                "to its planned end (the visits after stopping early enter the model with their off-treatment shift); "
                + mar.replace("dropout and other", "other"))
    if week > meta.treatment_end:
        return (f"end of treatment (week {meta.treatment_end}): treatment policy, the off-treatment follow-up score is used "
                f"whatever happened on treatment; {mar}")
    return mar


def estimand(meta, week, kind: str, *, marker: str = "", model: str = "", arm: str | None = None) -> dict[str, str]:
    """The ICH E9(R1) attributes of one effect row: population, variable (outcome and visit), intercurrent_events
    (how they are handled) and summary (the population-level summary).

    meta    the trial's DatasetMeta (outcome label, arms, schedule, marker units)
    week    the row's week
    kind    one of ESTIMAND_KINDS (what the row estimates)
    marker  the biomarker the row is about ('' for none)
    model   the registered model name: the biomarker models state their own population
    arm     the active arm the row compares with the control arm (None: the trial's only active arm)
    """
    if kind not in ESTIMAND_KINDS:
        raise ValueError(f"unknown estimand kind '{kind}'; one of {', '.join(ESTIMAND_KINDS)}")
    label, t, c = meta.outcome_label, arm if arm is not None else meta.treatment_arm, meta.control_arm
    week = int(week)
    when = f"week {week} ({phase(week, meta)})"
    arms = f"{t} - {c}"
    what = f"baseline {marker}" if marker else "all markers"
    population = f"all randomised participants with a baseline {label} score"
    change = f"{label} change from baseline at {when}"
    if kind in MARKER_KINDS or kind in MEDIATION_KINDS:
        missing_markers = ("missing biomarker values (no sample, dropout): hypothetical strategy under missing at random, "
                           "imputed in the model from the other markers, the arm and the other week; values below the "
                           "detection limit censored")
        if model == "mediation":
            population = f"participants with a biomarker value or a week-{week} {label} score"
            handling = (f"a missing week-{week} {label} score: hypothetical strategy under missing at random given the arm, the "
                        f"baseline score and the markers (dropout driven by the intermediate visits is not captured); "
                        f"{missing_markers}")
        else:
            population = "participants with at least one biomarker value (the biomarker sub-study)"
            handling = missing_markers
            if kind == "ratio_median":
                handling = (f"a missing week-{week} value: hypothetical strategy under missing at random given the arm and the "
                            "baseline markers (it adds no term); missing baseline values imputed, values below the detection "
                            "limit censored")
        unit = meta.marker_units.get(marker, "")
        variable = {
            "ratio_geometric": f"{marker} at {when}" + (f", {unit}" if unit else ""),
            "ratio_median": f"{marker} at {when}" + (f", {unit}" if unit else ""),
            "mediator_path": f"{change} and the change in log {marker}",
        }.get(kind, change)
        summary = {
            "ratio_geometric": f"ratio of geometric means ({t} / {c}), given the baseline markers",
            "ratio_median": f"ratio of medians ({t} / {c}), given the baseline markers",
            "mediation_total": f"total effect: difference in mean change from baseline ({arms})",
            "mediation_direct": f"natural direct effect: difference in mean change not through the markers ({arms})",
            "mediation_indirect": f"natural indirect effect through {marker or 'all markers'} ({arms})",
            "mediator_path": f"difference in mean change per unit change in log {marker} (x e)",
            "proportion_mediated": f"proportion of the total effect mediated by {marker or 'all markers'}",
        }[kind]
        return dict(zip(ESTIMAND_COLUMNS, (population, variable, handling, summary)))
    handling = TREATMENT_POLICY if kind == "difference_treatment_policy" else _scores_handling(meta, week, model)
    if kind == "prognostic_per_doubling":
        return dict(zip(ESTIMAND_COLUMNS, (
            population, f"baseline {label} score (week {week})", "none: measured before randomisation",
            f"difference in mean baseline score per doubling of {what}",
        )))
    variable = {
        "difference": f"{label} score at {when}",
        "difference_at_level": f"{label} score at {when}",
    }.get(kind, change)
    summary = {
        "difference": f"difference in means ({arms})",
        "difference_change": f"difference in mean change from baseline ({arms}), adjusted for the baseline score",
        "difference_treatment_policy": f"difference in mean change from baseline ({arms}) over all randomised participants, "
                                       "adjusted for the baseline score",
        "control_change": f"mean change from baseline in the {c} arm (within one arm, not a randomised comparison)",
        "difference_at_level": f"difference in means ({arms}) at the row's level of {what}, other markers at their geometric means",
        "moderation_per_doubling": f"difference in mean change from baseline per doubling of {what} (both arms)",
        "nac_moderation_per_doubling": f"change in the {arms} difference in means per doubling of {what}",
    }[kind]
    return dict(zip(ESTIMAND_COLUMNS, (population, variable, handling, summary)))


def with_estimands(table, meta, kinds, model: str = "", arms=None):
    """`table` (effect rows) with the ESTIMAND_COLUMNS appended after every other column; kinds: one per row; arms: the
    active arm of each row (None: the trial's only active arm, for every row)."""
    kinds = list(kinds)
    arms = [None] * len(kinds) if arms is None else list(arms)
    if table.empty and not kinds:
        return table.reindex(columns=[*[c for c in table.columns if c not in ESTIMAND_COLUMNS], *ESTIMAND_COLUMNS])
    if len(kinds) != len(table):
        raise ValueError(f"{len(kinds)} estimand kinds for {len(table)} rows")
    markers = table["marker"].astype("string").fillna("") if "marker" in table else pd.Series([""] * len(table), index=table.index)
    stated = pd.DataFrame([estimand(meta, w, k, marker=str(m), model=model, arm=a)
                           for w, k, m, a in zip(table["week"], kinds, markers, arms)],
                          index=table.index, columns=list(ESTIMAND_COLUMNS))
    rest = table.drop(columns=list(ESTIMAND_COLUMNS), errors="ignore")
    return pd.concat([rest, stated], axis=1)
