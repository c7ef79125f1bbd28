"""Coverage of the 90% posterior interval of the NAC effect over trials simulated at fixed true values
(the full 200-trial check: python -m validation.run --coverage)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from validation.coverage import INTERVAL_PROB, run_coverage, summarise


@pytest.mark.unit
def test_summarise_counts_coverage_bias_and_rmse():
    table = pd.DataFrame({"trial": [0, 1, 2, 3], "week": 16, "true": -3.0, "post_mean": [-2.0, -4.0, -3.0, -3.0],
                          "post_sd": 1.0, "lower": [-4.0, -5.0, -2.5, -4.0], "upper": [0.0, -3.5, -1.0, -2.0],
                          "covered": [True, False, False, True], "divergences": 0})
    s = summarise(table).iloc[0]
    assert s["coverage"] == 0.5 and s["bias"] == 0.0 and np.isclose(s["rmse"], np.sqrt(0.5))


@pytest.mark.slow
def test_small_coverage_run_is_near_nominal():
    n = 30
    table, info = run_coverage(n, seed=99, draws=300, tune=300, cores=1)
    summ = summarise(table).set_index("week")
    for w in (12, 16):
        covered = int(round(summ.loc[w, "coverage"] * n))
        # two-sided binomial test against the nominal 90%
        assert stats.binomtest(covered, n, INTERVAL_PROB).pvalue > 0.001, summ
        assert abs(summ.loc[w, "bias"]) < 3 * summ.loc[w, "sd_of_post_means"] / np.sqrt(n) + 0.2, summ
