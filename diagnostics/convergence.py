"""Convergence verdict of a fit: pure functions of InferenceData returning tables.

The thresholds are named constants used by the code, the tests and the README alike.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import arviz as az
import numpy as np
import pandas as pd

RHAT_MAX = 1.01  # split-R-hat (rank-normalised) at most this
ESS_BULK_MIN = 400  # bulk effective sample size at least this
ESS_TAIL_MIN = 400  # tail effective sample size at least this
DIVERGENCES_MAX = 0  # any divergence fails the verdict


@dataclass
class Verdict:
    ok: bool
    table: pd.DataFrame  # one row per parameter: r_hat, ess_bulk, ess_tail, mcse_mean
    divergences: int
    draws: int
    messages: list[str]

    def text(self) -> str:
        head = "PASS" if self.ok else "FAIL"
        lines = [
            f"convergence: {head}  (R-hat <= {RHAT_MAX}, bulk and tail ESS >= {ESS_BULK_MIN}, divergences = {DIVERGENCES_MAX})",
            f"  worst R-hat {self.table['r_hat'].max():.3f} ({self.table['r_hat'].idxmax()}), "
            f"min bulk ESS {self.table['ess_bulk'].min():.0f} ({self.table['ess_bulk'].idxmin()}), "
            f"min tail ESS {self.table['ess_tail'].min():.0f} ({self.table['ess_tail'].idxmin()}), "
            f"divergences {self.divergences} of {self.draws} draws",
        ]
        lines += [f"  - {m}" for m in self.messages]
        return "\n".join(lines)


def sampled_variables(idata: az.InferenceData, free: list[str] | None = None) -> list[str]:
    """Variables judged: the free parameters (given) or every posterior variable."""
    names = list(idata.posterior.data_vars)
    return [v for v in names if free is None or v in free]


def convergence_table(idata: az.InferenceData, var_names: list[str] | None = None) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summ = az.summary(idata, var_names=var_names, kind="diagnostics")
    # constants (e.g. the effect at baseline, fixed at 0) have no meaningful diagnostics
    return summ.dropna(subset=["r_hat"])


def verdict(idata: az.InferenceData, var_names: list[str] | None = None) -> Verdict:
    table = convergence_table(idata, var_names)
    stats = idata.sample_stats
    div = int(stats["diverging"].sum()) if "diverging" in stats else 0
    draws = int(np.prod([stats.sizes[d] for d in ("chain", "draw")]))
    msgs = []
    bad_rhat = table.index[table["r_hat"] > RHAT_MAX]
    if len(bad_rhat):
        msgs.append(f"R-hat above {RHAT_MAX} for {len(bad_rhat)} parameter(s), e.g. {list(bad_rhat[:3])}: chains disagree; run longer (--tune, --draws)")
    low_bulk = table.index[table["ess_bulk"] < ESS_BULK_MIN]
    low_tail = table.index[table["ess_tail"] < ESS_TAIL_MIN]
    if len(low_bulk) or len(low_tail):
        msgs.append(
            f"ESS below {ESS_BULK_MIN} for {len(set(low_bulk) | set(low_tail))} parameter(s), e.g. {list((list(low_bulk) + list(low_tail))[:3])}: increase --draws"
        )
    if div > DIVERGENCES_MAX:
        msgs.append(f"{div} divergent transitions: the posterior has regions the sampler cannot explore; raise --target-accept or try the robust likelihood")
    return Verdict(ok=not msgs, table=table, divergences=div, draws=draws, messages=msgs)
