"""Integrated PSIS-LOO against grouped K-fold cross-validation at the participant level.

For each dataset and model: PSIS-LOO on the integrated densities ('y_participant': post-baseline scores
given the baseline, participant effects integrated out) from one fit, and grouped K-fold by participant
on the same quantity from K refits (`diagnostics.loo.grouped_kfold_integrated`). Agreement is judged on
what a user reads, the elpd differences between models: the PSIS difference should lie within the SE of
the difference of the K-fold one. K-fold trains on (K-1)/K of the participants, so it is slightly
pessimistic, more so for models with more parameters.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pandas as pd


def run_loo_kfold(datasets: list[tuple[str, object, list[str]]], settings, k: int = 10, log=print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """datasets: (label, TrialDesign, model names). Returns (per model, per pair of models) tables."""
    from diagnostics.loo import grouped_kfold_integrated, loo_participants
    from inference.sampling import sample_all
    from models import get

    models, pairs = [], []
    for label, design, names in datasets:
        results = {}
        for name in names:
            t0 = time.perf_counter()
            idata, _ = sample_all(get(name).build(design), settings, quiet=True)
            psis = loo_participants(idata)
            kfold = grouped_kfold_integrated(design, get(name).build, settings, k=k)
            if list(map(str, psis.units)) != list(kfold.units):
                raise RuntimeError(f"{label}/{name}: PSIS and K-fold scored different participants")
            results[name] = (psis, kfold)
            models.append({"dataset": label, "model": name, "participants": len(psis.units), "psis_elpd": psis.elpd, "psis_se": psis.se,
                           "kfold_elpd": kfold.elpd, "kfold_se": kfold.se, "max_pareto_k": float(np.nanmax(psis.pareto_k)),
                           "share_k_above_0.7": float((psis.pareto_k > 0.7).mean()), "seconds": time.perf_counter() - t0})
            log(f"  {label} / {name}: PSIS {psis.elpd:.1f}, {k}-fold {kfold.elpd:.1f}, max k {np.nanmax(psis.pareto_k):.2f}")
        for a, b in itertools.combinations(names, 2):
            dp = results[a][0].elpd_i - results[b][0].elpd_i
            dk = results[a][1].elpd_i - results[b][1].elpd_i
            n = len(dp)
            se_k = float(np.sqrt(n * dk.var()))
            pairs.append({"dataset": label, "pair": f"{a} - {b}", "psis_diff": float(dp.sum()), "psis_se": float(np.sqrt(n * dp.var())),
                          "kfold_diff": float(dk.sum()), "kfold_se": se_k, "gap": float(dp.sum() - dk.sum()),
                          "gap_in_kfold_se": float((dp.sum() - dk.sum()) / se_k) if se_k > 0 else float("nan"),
                          "agrees": bool(abs(dp.sum() - dk.sum()) <= se_k)})
    return pd.DataFrame(models), pd.DataFrame(pairs)


def single_site_trial(seed: int):
    """The second dataset: 100 participants, one site, no biomarkers, 5 visits, 40% dropout by the last one."""
    import tempfile
    from pathlib import Path

    from data import TrialParameters, load_dataset, simulate_trial
    from models.design import build_design

    sim = simulate_trial(TrialParameters(n_participants=100, seed=seed, sites=("only",), site_weights=(1.0,), weeks=(0, 2, 4, 8, 12),
                                         treatment_end=8, dropout_by_last_week=0.4))
    sim.biomarkers = sim.biomarkers.iloc[0:0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = sim.write(Path(tmp) / "trial")
        return build_design(load_dataset(folder))
