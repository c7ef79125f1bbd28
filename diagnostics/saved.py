"""Reading a saved results folder back: the models it holds, the visit-score fits and their estimates
(for the checks and the comparison), and every fit's answer for the report's first section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import arviz as az
import pandas as pd

from models import REGISTRY

from .contrasts import CONTRASTS_FILE, contrasts_table, read_contrasts
from .run import posterior_attr
from .summary import Answer, answer, baseline_mean, observed_means


def saved_names(folder: Path) -> list[str]:
    """The models saved in a results folder (<model>/idata.nc), in run.json's order when present."""
    names = sorted(p.parent.name for p in folder.glob("*/idata.nc"))
    run_json = folder / "run.json"
    if run_json.is_file():
        order = list(json.loads(run_json.read_text()).get("models", {}))
        names = [n for n in order if n in names] + [n for n in names if n not in order]
    return names


def load_run(folder: str | Path) -> tuple[dict[str, az.InferenceData], dict[str, pd.DataFrame]]:
    """The visit-score fits (and estimates tables) saved in a results folder, in run.json's order when present.

    Each fit is read back whole (inference/storage.py recomputes the groups a saved fit does not
    store); fits of other outcomes (MMRM change scores, biomarker change, mediation) are not in the
    checks and the comparison, so they are not loaded (their answers are read from their own files by
    `saved_answers`): a folder holding only such fits gives no fits here."""
    from inference.storage import complete_saved, load_fit, scores_visits

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no results folder at {folder}")
    names = saved_names(folder)
    if not names:
        raise FileNotFoundError(f"{folder} holds no fitted model (no <model>/idata.nc): run fit.py first")
    idatas, estimates = {}, {}
    for n in names:
        stored = load_fit(folder / n / "idata.nc", complete=False)
        if not scores_visits(stored):
            continue
        idatas[n] = complete_saved(stored)
        est = folder / n / "estimates.csv"
        if est.is_file():
            estimates[n] = pd.read_csv(est)
    return idatas, estimates


@dataclass
class SavedAnswers:
    """What the report's first section needs from a saved results folder."""

    answers: dict[str, Answer] = field(default_factory=dict)
    observed: pd.DataFrame | None = None  # observed means by arm and week
    labels: tuple[str, ...] | None = None  # every arm, the control first
    outcome: str = "score"
    title: str = ""


def saved_answers(folder: str | Path, loaded: dict[str, az.InferenceData] | None = None,
                  contrasts: dict[str, pd.DataFrame] | None = None) -> SavedAnswers:
    """Every saved fit's answer (the report's first section), from its posterior, estimates.csv and contrasts.csv, in
    run.json's order.

    loaded: fits already read from the folder (e.g. by `load_run`), not read again; contrasts: per model, contrast
    tables computed anew (`saved_contrasts`), in place of the folder's contrasts.csv. The observed
    means, labels, outcome and title come from the dataset saved in the fits (empty without one)."""
    from data.schema import meta_of
    from inference.storage import DATA_GROUP, load_fit

    folder = Path(folder)
    names = saved_names(folder)
    loaded = loaded or {}
    stored = {n: loaded[n] if n in loaded else load_fit(folder / n / "idata.nc", complete=False) for n in names}
    with_data = next((i for i in stored.values() if DATA_GROUP in i.groups()), None)
    if with_data is None:
        return SavedAnswers()
    ds = with_data[DATA_GROUP]
    meta = meta_of(ds)
    labels = tuple(meta.arms)
    observed = observed_means(ds, labels)
    baseline = baseline_mean(ds)
    answers = {}
    for n, idata in stored.items():
        est = folder / n / "estimates.csv"
        table = pd.read_csv(est, keep_default_na=True) if est.is_file() else None
        if table is not None and "marker" in table:
            table["marker"] = table["marker"].astype("string").fillna("")
        model = str(posterior_attr(idata, "model", n))
        description = REGISTRY[model].description if model in REGISTRY else ""
        answers[n] = answer(n, idata, table, labels, baseline, meta.outcome_label, description,
                            contrasts=(contrasts or {}).get(n, read_contrasts(folder / n / CONTRASTS_FILE)))
    return SavedAnswers(answers, observed, labels, meta.outcome_label, meta.title)


def saved_contrasts(folder: str | Path, contrasts, loaded: dict[str, az.InferenceData] | None = None) -> dict[str, pd.DataFrame]:
    """contrasts.csv of every saved fit that has per-arm means (diagnostics.contrasts.contrasts_table), with `contrasts`
    (parsed); the MCID is the one of the fit's estimates.csv (its 'p_below_-MCID' column), else the default."""
    from data.schema import meta_of
    from inference.storage import load_fit, saved_dataset
    from models.effects import DEFAULT_MCID

    folder = Path(folder)
    loaded = loaded or {}
    out = {}
    for n in saved_names(folder):
        idata = loaded[n] if n in loaded else load_fit(folder / n / "idata.nc", complete=False)
        model = str(posterior_attr(idata, "model", n))
        est = folder / n / "estimates.csv"
        columns = pd.read_csv(est, nrows=0).columns if est.is_file() else []
        mcid = next((float(c.removeprefix("p_below_-")) for c in columns if c.startswith("p_below_-")), DEFAULT_MCID)
        table = contrasts_table(idata, meta_of(saved_dataset(idata)), contrasts, mcid,
                                change_scores=REGISTRY[model].scores_change if model in REGISTRY else False)
        if table is not None:
            out[n] = table
    return out
