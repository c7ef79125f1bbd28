"""Writing a run's diagnostics into its results folder, each file atomically (a temporary sibling renamed
over it) with the usual permissions:
    <model>/ppc_trajectory.csv, ppc_visits.csv, ppc_rates.csv, loo_visit.csv, loo_participant.csv,
    <model>/diagnostics.txt, <model>/convergence.csv, <model>/convergence.txt, <model>/figures/*.png,
    with the sensitivity analyses <model>/sensitivity.csv, tipping_point.csv, responders.csv, prior_sensitivity.csv
    and <model>/figures/tipping_point.png, summary/<model>_<figure>.png,
    the submission tables (diagnostics/csr_tables.py) <model>/ard.csv, <model>/efficacy_table.rtf and .docx and with the
    sensitivity analyses <model>/sensitivity_table.rtf and .docx,
    comparison_participant.csv, comparison_visit.csv, comparison.txt, report.html
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from data.atomic import atomic_write_bytes, usual_permissions

from .borrowing import MAP_FILE
from .borrowing import figure as borrowing_figure
from .csr_tables import FORMATS, SENSITIVITY_FILE
from .report import render_report
from .run import RunDiagnostics
from .sensitivity_analyses import TIPPING_FIGURE


def _write(path: Path, payload: bytes) -> None:
    """Atomic write, then the usual permissions (temporary files are created private)."""
    atomic_write_bytes(path, payload)
    usual_permissions(path)


def _csv(df: pd.DataFrame, path: Path, index: bool = False) -> None:
    _write(path, df.to_csv(index=index).encode())


def write_outputs(run: RunDiagnostics, folder: str | Path) -> Path:
    """Write every table, figure and the report into the run folder; returns the report path."""
    folder = Path(folder)
    for name, m in run.models.items():
        mf = folder / name
        (mf / "figures").mkdir(parents=True, exist_ok=True)
        if m.ppc is not None:
            _csv(m.ppc.trajectory, mf / "ppc_trajectory.csv")
            _csv(m.ppc.visits, mf / "ppc_visits.csv")
            _csv(m.ppc.rates, mf / "ppc_rates.csv")
        for level, r in m.loo.items():
            _csv(r.table(), mf / f"loo_{level}.csv")
        _csv(m.verdict.table, mf / "convergence.csv", index=True)
        _write(mf / "convergence.txt", (m.verdict.text() + "\n").encode())
        ppc = [m.ppc.text(), json.dumps({"loo_pit": m.ppc.loo_pit})] if m.ppc is not None else []
        text = "\n".join([m.verdict.text(), *ppc, *[r.text() for r in m.loo.values()]])
        _write(mf / "diagnostics.txt", (text + "\n").encode())
        for key, png in m.figures.items():
            _write(mf / "figures" / f"{key}.png", png)
    for name, sens in run.sensitivity.items():
        if sens.saved:  # already in the folder
            continue
        (folder / name / "figures").mkdir(parents=True, exist_ok=True)
        for table, df in sens.tables.items():
            _csv(df, folder / name / f"{table}.csv")
        if sens.tipping_figure:
            _write(folder / name / "figures" / f"{TIPPING_FIGURE}.png", sens.tipping_figure)
    for name, tables in run.submission.items():  # the ARD, then each table rendered from it
        t0 = time.perf_counter()
        files = tables.files()
        (folder / name).mkdir(parents=True, exist_ok=True)
        for file, payload in files.items():
            _write(folder / name / file, payload)
        for ext in FORMATS:  # a sensitivity table of an earlier run that this ARD no longer holds would contradict it
            stale = folder / name / f"{SENSITIVITY_FILE}.{ext}"
            if stale.name not in files and stale.is_file():
                stale.unlink()
        tables.timings["render_s"] = time.perf_counter() - t0
    for name, figs in run.answer_figures.items():  # the report's first section, also as PNG files beside it
        (folder / "summary").mkdir(exist_ok=True)
        for key, png in figs.items():
            _write(folder / "summary" / f"{name}_{key}.png", png)
    if run.borrowing is not None:  # the MAP prior, the conflict check and each model's posterior of the control change
        _write(folder / MAP_FILE, (json.dumps(run.borrowing, indent=2, default=float) + "\n").encode())
        (folder / "summary").mkdir(exist_ok=True)
        run.figures["map_prior"] = borrowing_figure(run.borrowing)  # drawn once: the file and the report's section
        _write(folder / "summary" / "map_prior.png", run.figures["map_prior"])
    for level, table in run.comparisons.items():
        _csv(table, folder / f"comparison_{level}.csv", index=True)
    _write(folder / "comparison.txt", (run.comparison_text() + "\n").encode())
    report = folder / "report.html"
    _write(report, render_report(run).encode("utf-8"))
    return report
