"""How an effect is stated: one row of posterior summaries of the draws of one quantity.

Models use `effect_row` to declare the extra rows of their estimates table (ModelSpec.extra_estimates);
diagnostics/estimates.py builds the generic rows (NAC - placebo by week, placebo change, biomarker
effects per doubling) with the same function, so every row has the same columns.

Lower scores are better on the depression scales handled here, so 'NAC better' is
P(NAC - placebo < 0) ('p_below_0') and 'benefit > MCID' is P(NAC - placebo < -MCID).
"""

from __future__ import annotations

import arviz as az
import numpy as np

HDI_PROB = 0.94
DEFAULT_MCID = 2.0  # MADRS points: common minimal clinically important drug-placebo difference


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
        f"hdi_{(1 - HDI_PROB) / 2:.0%}": lo,
        f"hdi_{1 - (1 - HDI_PROB) / 2:.0%}": hi,
        "p_below_0": (flat < 0).mean(),
        "mcse_mean": flat.std(ddof=1) / np.sqrt(ess) if ess == ess and ess > 0 else float("nan"),
    }
    if mcid is not None:
        row[f"p_below_-{mcid:g}"] = (flat < -mcid).mean()
    return row
