"""Remedies for unreliable PSIS-LOO: units with Pareto k above the threshold are refitted without their data
(exact leave-out) or, when there are many, every model of the comparison is scored by (grouped) K-fold
cross-validation with the same folds, so differences stay paired. Refits use fewer draws than the main fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .loo import REFIT_MAX, grouped_kfold, grouped_kfold_integrated, remedy

REFIT_DRAWS = 1000  # posterior draws per chain in each leave-out refit
REFIT_TUNE = 500
REFIT_CHAINS = 2
REFIT_MIN_DRAWS = 1000  # fit.py refits only when the main fit has at least this many draws (chains x draws): smoke runs skip them


def refit_settings(settings):
    """Sampler settings for leave-out refits: fewer draws and chains than the main fit, same sampler and seed."""
    return dataclasses.replace(settings, draws=min(settings.draws, REFIT_DRAWS), tune=min(settings.tune, REFIT_TUNE), chains=min(settings.chains, REFIT_CHAINS))


def apply_remedies(group: list[str], models: dict, design, builders: dict[str, Callable], settings, level: str, kfold: int, log=print, min_draws: int = 0) -> list[str]:
    """Replace unreliable PSIS estimates at `level` by refits, the same way for every model of the group.

    models  name -> ModelDiagnostics (diagnostics.run), their `loo[level]` replaced in place; returns the notes."""
    notes = []
    bad = {n: int(models[n].loo[level].bad.sum()) for n in group}
    if not any(bad.values()):
        return notes
    if any(models[n].loo[level].integrated for n in group):
        runnable = level == "participant" and kfold >= 2 and design is not None and settings is not None and all(n in builders for n in group)
        if not runnable:
            notes.append(
                f"{level} level: {', '.join(f'{n} ({bad[n]})' for n in group if bad[n])} unit(s) with Pareto k above the threshold "
                "on the integrated densities: those elpd values are less reliable"
                + ("; python diagnose.py RESULTS --kfold 5 replaces them by grouped K-fold" if level == "participant" else "")
            )
            return notes
        rs = refit_settings(settings)
        for n in group:  # the same folds for every model, so differences stay paired
            log(f"  {n}: grouped {kfold}-fold cross-validation by participant on the integrated densities ({kfold} refits)")
            old = models[n].loo[level]
            kf = grouped_kfold_integrated(design, builders[n], rs, k=kfold)
            models[n].loo[level] = dataclasses.replace(kf, pareto_k=old.pareto_k, p_loo=old.p_loo,
                                                       notes=old.notes + kf.notes + [f"PSIS elpd was {old.elpd:.1f}"])
        notes.append(f"{level} level: grouped {kfold}-fold cross-validation on the integrated densities replaced PSIS for every model "
                     "(some participants had Pareto k above the threshold)")
        return notes
    if settings is not None and settings.chains * settings.draws < min_draws:
        notes.append(
            f"{level} level: {', '.join(f'{n} ({bad[n]})' for n in group if bad[n])} unit(s) with Pareto k above the threshold were not refitted: "
            f"the fit has fewer than {min_draws} draws (a smoke run); refit with more draws, or run diagnose.py --kfold K. Those elpd values are unreliable"
        )
        return notes
    missing = [n for n in group if bad[n] and n not in builders]
    if missing or design is None or settings is None or kfold < 1:
        notes.append(
            f"{level} level: {', '.join(f'{n} ({bad[n]})' for n in group if bad[n])} unit(s) with Pareto k above the threshold were not refitted "
            "(refits disabled or the data/model are unavailable): those elpd values are unreliable; "
            "the remedy is grouped K-fold by participant: python diagnose.py RESULTS --kfold 5"
        )
        return notes
    rs = refit_settings(settings)
    if max(bad.values()) > REFIT_MAX:
        # K-fold for every model, with the same folds, so differences are paired
        how = "grouped K-fold cross-validation by participant" if level == "participant" else "K-fold cross-validation by visit"
        for n in group:
            log(f"  {n}: {bad[n]} {level}(s) with Pareto k > threshold: {how.replace('K-fold', f'{kfold}-fold')} ({kfold} refits)")
            kf = grouped_kfold(design, builders[n], rs, k=kfold, level=level)
            old = models[n].loo[level]
            models[n].loo[level] = dataclasses.replace(
                kf, pareto_k=old.pareto_k, p_loo=old.p_loo, notes=old.notes + kf.notes + [f"{bad[n]} {level}(s) had Pareto k above the threshold; PSIS elpd was {old.elpd:.1f}"]
            )
        notes.append(f"{level} level: {how.replace('K-fold', f'{kfold}-fold')} replaced PSIS for every model (some had more than {REFIT_MAX} units with high Pareto k)")
    else:
        for n in group:
            if bad[n]:
                log(f"  {n}: refitting {bad[n]} {level}(s) with Pareto k > threshold (exact leave-out)")
                models[n].loo[level] = remedy(models[n].loo[level], design, builders[n], rs, refit_max=REFIT_MAX, k=kfold)
        notes.append(f"{level} level: units with high Pareto k were refitted without their data (exact leave-one-out)")
    return notes
