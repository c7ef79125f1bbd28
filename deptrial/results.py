"""What fit_trial returns: every model's fit (ModelFit) and the run (RunResult), as written into the results folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from diagnostics.convergence import Verdict
from diagnostics.run import RunDiagnostics


@dataclass
class ModelFit:
    """One model's fit: the InferenceData (as saved in out/<name>/idata.nc), its estimates, verdict, timings and contrasts."""

    name: str
    idata: object
    estimates: pd.DataFrame
    verdict: Verdict
    timings: dict
    notes: dict = field(default_factory=dict)
    contrasts: pd.DataFrame | None = None  # contrasts.csv (diagnostics/contrasts.py); None for a model without per-arm means


@dataclass
class RunResult:
    """What `fit_trial` wrote into `out`, in memory."""

    out: Path
    fits: dict[str, ModelFit]
    run: dict  # the content of run.json
    diagnostics: RunDiagnostics | None = None  # PPC, LOO and comparison of the visit-score models
    report: Path | None = None

    @property
    def estimates(self) -> pd.DataFrame:
        """Every model's estimates in one table, with a 'model' column first."""
        tables = [f.estimates.assign(model=name) for name, f in self.fits.items() if not f.estimates.empty]
        if not tables:
            return pd.DataFrame()
        table = pd.concat(tables, ignore_index=True)
        return table[["model", *[c for c in table.columns if c != "model"]]]

    @property
    def contrasts(self) -> pd.DataFrame:
        """Every model's contrasts (contrasts.csv) in one table, with a 'model' column first (empty without any)."""
        tables = [f.contrasts.assign(model=name) for name, f in self.fits.items() if f.contrasts is not None and not f.contrasts.empty]
        if not tables:
            return pd.DataFrame()
        table = pd.concat(tables, ignore_index=True)
        return table[["model", *[c for c in table.columns if c != "model"]]]

    @property
    def comparison(self) -> dict[str, pd.DataFrame]:
        """The LOO comparison tables by level ('visit', 'participant'); empty without comparable models."""
        return dict(self.diagnostics.comparisons) if self.diagnostics is not None else {}

    @property
    def sensitivity(self) -> dict[str, dict[str, pd.DataFrame]]:
        """Per model, the sensitivity tables written with `sensitivity=True` ({} without): sensitivity, tipping_point,
        responders, prior_sensitivity, those the model supports."""
        found = self.diagnostics.sensitivity if self.diagnostics is not None else {}
        return {name: dict(s.tables) for name, s in found.items()}

    @property
    def converged(self) -> bool:
        return all(f.verdict.ok for f in self.fits.values())
