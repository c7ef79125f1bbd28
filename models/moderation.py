"""The moderation model's estimates: does an active arm's effect depend on baseline inflammation (IL-6, CRP) or BDNF?

The model (models/trajectory.py, member 'moderation') is the headline model plus a biomarker x arm x time interaction,
one per active arm a (T_ia = 1 if participant i is in active arm a, else 0):

    y_iw = alpha + site_s(i) + b0_i + sum_k pi_k z_ik
           + (beta_1 + sum_a delta_a1 T_ia + sum_k gamma_k z_ik + sum_a sum_k eta_ak z_ik T_ia + b1_i) t1_w
           + (beta_2 + sum_a delta_a2 T_ia) t2_w + e_iw

eta_ak ('nac_marker_moderation', active_arm x marker) is the extra arm a - control difference by the end
of treatment per SD of baseline log marker k (reported per doubling as 'nac_moderation_per_doubling').
The effect of arm a for a participant whose baseline marker k is x (natural units), the other markers
at their geometric means, is

    delta_a1 t1_w + eta_ak (ln x - m_k) / s_k t1_w + delta_a2 t2_w

(m_k, s_k: mean and SD of the observed baseline log values). `nac_effect` (active_arm x week) is the
effect at the mean log of every marker. The estimates table adds, for each active arm in turn, the
effect at chosen levels at the end of treatment and the last follow-up: clinical cut points where
they exist (hs-CRP 1, 3 and 10 mg/L: low / average / high cardiovascular risk, > 10 suggests acute
inflammation; a later NAC trial found benefit only above 3 mg/L), the quartiles of the observed
baseline values otherwise. Missing and censored markers are modelled as in the headline model. Each
row states its estimand (models/effects.py `estimand`), with its arm.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .design import MarkerData, TrialDesign
from .effects import effect_row, with_estimands

# Clinical cut points in natural units, used instead of quartiles when the marker's unit matches.
CLINICAL_LEVELS = {"crp": ("mg/L", (1.0, 3.0, 10.0))}
QUARTILES = (0.25, 0.5, 0.75)


def baseline_values(md: MarkerData, k: int) -> np.ndarray:
    """Baseline values of marker k in natural units; values below the detection limit at the limit."""
    z = np.where(md.censored[:, k], md.z_upper[:, k], md.z[:, k])
    z = z[~md.missing[:, k]]
    return np.exp(md.log_center[k] + md.log_scale[k] * z)


def marker_levels(md: MarkerData, levels: dict | None = None) -> dict[str, list[tuple[str, float]]]:
    """Levels at which to report the active arms' effects, per marker: (label, value in natural units).

    `levels` maps a marker to its own values; otherwise clinical cut points (CLINICAL_LEVELS) when
    the unit matches, else the quartiles of the observed baseline values (exact as long as fewer than
    a quarter of the values are below the detection limit, which sit at the limit here).
    """
    out = {}
    for k, (mk, unit) in enumerate(zip(md.names, md.units)):
        if levels and mk in levels:
            out[mk] = [(f"{v:g} {unit}", float(v)) for v in levels[mk]]
        elif mk in CLINICAL_LEVELS and CLINICAL_LEVELS[mk][0] == unit:
            out[mk] = [(f"{v:g} {unit}", float(v)) for v in CLINICAL_LEVELS[mk][1]]
        else:
            vals = baseline_values(md, k)
            if len(vals) == 0:
                continue
            qs = np.quantile(vals, QUARTILES)
            out[mk] = [(f"{v:.3g} {unit} ({p:.0%} quantile)", float(v)) for p, v in zip(QUARTILES, qs)]
    return out


def nac_effect_at_levels(idata, design: TrialDesign, mcid: float | None = 2.0, levels: dict | None = None) -> pd.DataFrame:
    """Each active arm - control at the end of treatment and the last follow-up for chosen baseline marker levels, and
    the extra difference per doubling of each marker: the rows of one active arm, then the next (declared order)."""
    md = design.baseline
    meta = design.meta
    post = idata.posterior
    label = meta.outcome_label
    weeks = [meta.treatment_end] + ([meta.last_week] if meta.last_week > meta.treatment_end else [])
    t1 = dict(zip(design.weeks.tolist(), design.week_t1.tolist()))
    rows, kinds, arms = [], [], []
    for arm in design.active_arms:
        effect, moderation = post["nac_effect"].sel(active_arm=arm), post["nac_marker_moderation"].sel(active_arm=arm)
        for k, mk in enumerate(md.names):
            for text, value in marker_levels(md, levels).get(mk, []):
                z = (np.log(value) - md.log_center[k]) / md.log_scale[k]
                for w in weeks:
                    draws = effect.sel(week=w).values + moderation.sel(marker=mk).values * z * t1[w]
                    rows.append(
                        effect_row(
                            f"{arm} - {meta.control_arm} mean {label} at week {w}, baseline {mk} {text}",
                            draws, mcid, week=w, marker=mk, unit=f"{label} points",
                        )
                    )
                    kinds.append("difference_at_level")
                    arms.append(arm)
        for mk in md.names:
            rows.append(
                effect_row(
                    f"extra {arm} - {meta.control_arm} difference by week {meta.treatment_end} per doubling of baseline {mk}",
                    post["nac_moderation_per_doubling"].sel(active_arm=arm, marker=mk).values, None, week=meta.treatment_end,
                    marker=mk, unit=f"{label} points per doubling ({meta.marker_units.get(mk, '')})",
                )
            )
            kinds.append("nac_moderation_per_doubling")
            arms.append(arm)
    return with_estimands(pd.DataFrame(rows), meta, kinds, model="moderation", arms=arms)


def extra_estimates(idata, design: TrialDesign, mcid: float) -> pd.DataFrame:
    return nac_effect_at_levels(idata, design, mcid)
