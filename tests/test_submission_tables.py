"""The submission tables (diagnostics/csr_tables.py, diagnostics/table_formats.py): the analysis results dataset
(ARD) recomputed independently from the posterior draws and compared with estimates.csv, contrasts.csv and
sensitivity.csv; the efficacy and sensitivity tables read back from their RTF (control words stripped) and DOCX
(python-docx) files, every number compared with the ARD.

The unit tier builds MMRM draws by hand on a small simulated three-arm trial (no sampling); the smoke tier runs
fit.py (tiny fits: a two-arm MMRM with --mcid 3 and the sensitivity analyses at two weeks, the bundled three-arm trial with the `treatment` model, whose fit also
serves the three-arm estimates, contrasts.csv and report) and diagnose.py on the saved folder; the slow tier recomputes the
three-arm contrasts with diagnose.py and renders the tables to PDF with LibreOffice when it is installed.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from test_sensitivity import _trial, mmrm_posterior

import diagnose
import fit
from data import DOSE_DATASET
from diagnostics import table_formats as fmt
from diagnostics.contrasts import CONTRASTS_FILE, contrasts_table
from diagnostics.csr_tables import (
    ARD_COLUMNS,
    ARD_FILE,
    KEY,
    STATISTICS,
    SubmissionTables,
    check_ard,
    read_ard,
    saved_submission_tables,
    submission_tables,
)
from diagnostics.estimates import estimates_table
from diagnostics.outputs import write_outputs
from diagnostics.run import RunDiagnostics
from diagnostics.sensitivity_analyses import SensitivityOptions, model_sensitivity, saved_sensitivity
from inference.idata_io import save_idata
from inference.storage import load_fit

# ---------------------------------------------------------------- reading the files back


def _unescape(text: str) -> str:
    """RTF text (escaped backslash and braces, \\uN? code units) as plain text."""
    units: list[int] = []
    out: list[str] = []

    def flush():
        if units:
            out.append(b"".join(u.to_bytes(2, "little") for u in units).decode("utf-16-le"))
            units.clear()

    for m in re.finditer(r"\\u(-?\d+)\?|\\([\\{}])|([^\\])|(\\.)", text):
        assert m.group(4) is None, f"a control word in the text: {text!r}"
        if m.group(1) is not None:
            units.append(int(m.group(1)) % 65536)
            continue
        flush()
        out.append(m.group(2) or m.group(3))
    flush()
    return "".join(out)


CELL = re.compile(r"\{\\f\d+(?:\\[a-z]+\d*)* ((?:\\.|[^\\{}])*)\}\\cell")  # {\f0\b text}\cell
GROUP = re.compile(r"\{\\f\d+(?:\\[a-z]+\d*)* ((?:\\.|[^\\{}])*)\}")


def read_rtf(data: bytes) -> dict:
    """An rtflite table document as text: title lines, table rows (cell texts), footnote lines, source."""
    text = data.decode("ascii")  # plain 7-bit RTF
    assert text.startswith("{\\rtf1") and text.rstrip().endswith("}")
    paragraphs = [line for line in text.splitlines() if line.startswith("{\\pard")]
    rows = [CELL.findall(chunk) for chunk in text.split("\\intbl\\row")]
    *table, footnote = [r for r in rows if r]
    assert len(footnote) == 1  # the footnotes: one cell, a line each
    return {"title": [_unescape(g) for g in GROUP.findall(paragraphs[0])], "rows": [[_unescape(c) for c in r] for r in table],
            "footnotes": [_unescape(line) for line in footnote[0].split("\\line ")],
            "source": _unescape(GROUP.findall(paragraphs[-1])[0])}


def read_docx(data: bytes) -> dict:
    """A Word table document as text: title lines, table rows (cell texts; a merged cell once), footnotes and source."""
    from docx import Document

    doc = Document(io.BytesIO(data))
    assert len(doc.tables) == 1
    rows = []
    for row in doc.tables[0].rows:
        cells, seen = [], set()
        for cell in row.cells:  # python-docx repeats a merged cell: keep it once
            if id(cell._tc) not in seen:
                seen.add(id(cell._tc))
                cells.append(cell.text)
        rows.append(cells)
    body = doc.element.body
    paragraphs = [p.text for p in doc.paragraphs]
    table_at = list(body).index(doc.tables[0]._tbl)
    before = sum(1 for el in list(body)[:table_at] if el.tag.endswith("}p"))
    return {"title": paragraphs[:before], "rows": rows, "footnotes": paragraphs[before:-1], "source": paragraphs[-1]}


# ---------------------------------------------------------------- comparing a table with the ARD


def _num(text: str) -> float:
    return float(text)


def _close(text: str, value: float, decimals: int = 1) -> None:
    """A number printed to `decimals` matches the ARD value (half a unit of the last decimal)."""
    assert abs(_num(text) - value) <= 0.5 * 10 ** -decimals + 1e-9, (text, value)


def _check_probability(text: str, value: float) -> None:
    if text.startswith("<"):
        assert value < 0.0005, (text, value)
    elif text.startswith(">"):
        assert value > 0.9995, (text, value)
    else:
        _close(text, value, 3)


def _mean_cri(text: str):
    m = re.fullmatch(r"(-?\d+\.\d) \((-?\d+\.\d), (-?\d+\.\d)\)", text)
    assert m, text
    return m.groups()


class Ard:
    def __init__(self, ard: pd.DataFrame):
        self.frame = ard

    def value(self, analysis: str, who: str, visit, statistic: str) -> float:
        rows = self.frame[(self.frame["analysis"] == analysis) & (self.frame["arm_or_contrast"].fillna("") == who)
                          & (self.frame["statistic"] == statistic)]
        rows = rows[rows["visit"].isna()] if visit is None else rows[rows["visit"] == visit]
        assert len(rows) == 1, (analysis, who, visit, statistic, len(rows))
        return float(rows["value"].iloc[0])


def check_efficacy(doc: dict, ard: pd.DataFrame, name: str, arms: list[str]) -> int:
    """Every number of an efficacy table equals its ARD row (to its printed decimals); returns how many were compared."""
    a, analysis, control = Ard(ard), f"{name}: primary (MAR)", arms[0]
    header, *body = doc["rows"]
    assert header[:2] == ["Visit", "Statistic"]
    checked = 0
    for arm, cell in zip(arms, header[2:]):
        assert cell == f"{arm} (N = {int(a.value(analysis, arm, None, 'n'))})"
        checked += 1
    visit = None
    for row in body:
        assert len(row) == 2 + len(arms), row
        if row[0]:
            visit = None if row[0] == "Baseline" else int(re.match(r"Week (\d+)", row[0]).group(1))
        label, cells = row[1], row[2:]
        for arm, cell in zip(arms, cells):
            contrast = f"{arm} - {control}"
            if label == "Mean (SD)":
                m = re.fullmatch(r"(-?\d+\.\d) \((\d+\.\d)\)", cell)
                _close(m.group(1), a.value(analysis, arm, None, "baseline_mean"))
                _close(m.group(2), a.value(analysis, arm, None, "baseline_sd"))
            elif label == "n observed":
                assert int(cell) == a.value(analysis, arm, visit, "n_observed")
            elif label.startswith("Mean change from baseline (95% CrI)"):
                for text, stat in zip(_mean_cri(cell), ("mean", "cri_lower", "cri_upper")):
                    _close(text, a.value(analysis, arm, visit, stat))
            elif arm == control:
                assert cell == "", (label, cell)  # the control arm has no difference from itself
                continue
            elif label == f"Difference vs {control} (95% CrI)":
                for text, stat in zip(_mean_cri(cell), ("mean", "cri_lower", "cri_upper")):
                    _close(text, a.value(analysis, contrast, visit, stat))
            elif label == "P(benefit)":
                _check_probability(cell, a.value(analysis, contrast, visit, "p_benefit"))
            elif label == "P(benefit > MCID)":
                _check_probability(cell, a.value(analysis, contrast, visit, "p_benefit_mcid"))
            else:
                raise AssertionError(f"unexpected row {label}")
            checked += 1
    weeks = sorted(int(w) for w in ard.loc[(ard["analysis"] == analysis) & (ard["statistic"] == "mean"), "visit"].unique())
    assert checked == len(arms) * (2 + 2 * len(weeks)) + (len(arms) - 1) * 3 * len(weeks)  # no number left unchecked
    mcid = a.value(analysis, "", None, "mcid")
    notes = " ".join(doc["footnotes"])
    assert f"MCID = {mcid:g} points" in notes and f"below -{mcid:g} points" in notes
    assert f"{int(a.value(analysis, '', None, 'n_draws'))} posterior draws" in notes
    assert "95% equal-tailed credible interval (the 2.5% and 97.5% posterior quantiles)" in notes
    return checked


def check_sensitivity(doc: dict, ard: pd.DataFrame, name: str, arms: list[str], week) -> int:
    """Every number of a sensitivity table equals its ARD row; `week` the visit shown, or a list of visits (a table with a
    Visit column, a group of rows per visit). Returns how many numbers were compared."""
    a, control = Ard(ard), arms[0]
    weeks = [week] if isinstance(week, int) else list(week)
    several = len(weeks) > 1
    contrasts = [f"{arm} - {control}" for arm in arms[1:]]
    spans, header, *body = doc["rows"]
    assert spans == ["", *contrasts]
    assert header == [*["Visit"] * several, "Analysis (missing scores after dropout)", *["Difference (95% CrI)", "P(benefit)"] * len(contrasts)]
    checked = 0
    labels = {"MAR (primary)": "MAR", "J2R: jump to reference": "J2R", "CR: copy reference": "CR", "CIR: copy increments in reference": "CIR",
              **{f"{s}, information anchored": f"{s} (information anchored)" for s in ("J2R", "CR", "CIR")}}
    seen = []
    at = weeks[0]
    for row in body:
        if several:
            if row[0]:
                at = int(re.match(r"Week (\d+)", row[0]).group(1))
                seen.append(at)
            row = row[1:]
        label, cells = row[0], row[1:]
        pairs = list(zip(cells[::2], cells[1::2]))
        if label.startswith("Tipping point"):
            factor = label == "Tipping point: factor on the change"
            assert factor or label == "Tipping point: delta (points)"
            analysis, stat = ((f"{name}: tipping point (MAR x factor)", "tipping_factor") if factor else
                              (f"{name}: tipping point (MAR + delta)", "tipping_delta"))
            for contrast, (delta, blank) in zip(contrasts, pairs):
                value = a.value(analysis, contrast, at, stat)
                if np.isnan(value):
                    assert delta == fmt.MISSING
                else:
                    _close(delta, value)
                assert blank == ""
                checked += 1
            continue
        delta = re.fullmatch(r"MAR \+ delta (\S+) points", label)
        analysis = f"{name}: MAR + delta {delta.group(1)}" if delta else f"{name}: {labels[label]}"
        if delta:
            assert a.value(analysis, "", None, "delta") == float(delta.group(1))
        for contrast, (difference, p) in zip(contrasts, pairs):
            for text, stat in zip(_mean_cri(difference), ("mean", "cri_lower", "cri_upper")):
                _close(text, a.value(analysis, contrast, at, stat))
            _check_probability(p, a.value(analysis, contrast, at, "p_benefit"))
            checked += 2
    assert seen == (weeks if several else [])
    n_analyses = ard.loc[(ard["table"] == "sensitivity") & ~ard["analysis"].str.contains("tipping"), "analysis"].nunique()
    n_tipping = ard.loc[ard["analysis"].str.contains("tipping point"), "analysis"].nunique()  # additive, multiplicative
    assert checked == len(weeks) * len(contrasts) * (2 * n_analyses + n_tipping)
    return checked


def check_ard_against_draws(ard: pd.DataFrame, idata, ds, name: str, mcid: float) -> None:
    """The ARD's efficacy rows recomputed here from the posterior draws and the dataset."""
    a = Ard(ard)
    post = idata.posterior
    arms = ["placebo", *[str(x) for x in post["active_arm"].values]]
    analysis = f"{name}: primary (MAR)"
    flat = lambda v: v.transpose("chain", "draw", ...).values.reshape((-1,) + v.shape[2:])  # noqa: E731
    score, arm_index = ds["score"].values, ds["arm_index"].values
    assert a.value(analysis, "", None, "n_draws") == post.sizes["chain"] * post.sizes["draw"]
    assert a.value(analysis, "", None, "mcid") == mcid and a.value(analysis, "", None, "cri_level") == 0.95
    for k, arm in enumerate(arms):
        base = score[(arm_index == k) & ~np.isnan(score[:, 0]), 0]
        assert a.value(analysis, arm, None, "n") == len(base)
        assert a.value(analysis, arm, None, "baseline_mean") == pytest.approx(base.mean(), abs=1e-12)
        assert a.value(analysis, arm, None, "baseline_sd") == pytest.approx(np.std(base, ddof=1), abs=1e-12)
    weeks = [int(w) for w in post["week"].values if int(w) != int(ds["week"].values[0])]
    for w in weeks:
        control = flat(post["placebo_change"].sel(week=w))
        for k, arm in enumerate(arms):
            draws = control if k == 0 else control + flat(post["nac_effect"].sel(active_arm=arm, week=w))
            j = list(ds["week"].values).index(w)
            assert a.value(analysis, arm, w, "n_observed") == int((~np.isnan(score[arm_index == k, j])).sum())
            assert a.value(analysis, arm, w, "mean") == pytest.approx(draws.mean(), abs=1e-10)
            assert a.value(analysis, arm, w, "cri_lower") == pytest.approx(np.percentile(draws, 2.5), abs=1e-10)
            assert a.value(analysis, arm, w, "cri_upper") == pytest.approx(np.percentile(draws, 97.5), abs=1e-10)
            if k:
                d = flat(post["nac_effect"].sel(active_arm=arm, week=w))
                c = f"{arm} - placebo"
                assert a.value(analysis, c, w, "mean") == pytest.approx(d.mean(), abs=1e-10)
                assert a.value(analysis, c, w, "cri_lower") == pytest.approx(np.percentile(d, 2.5), abs=1e-10)
                assert a.value(analysis, c, w, "cri_upper") == pytest.approx(np.percentile(d, 97.5), abs=1e-10)
                assert a.value(analysis, c, w, "p_benefit") == np.mean(d < 0)
                assert a.value(analysis, c, w, "p_benefit_mcid") == np.mean(d < -mcid)


def check_ard_against_tables(ard: pd.DataFrame, estimates: pd.DataFrame, contrasts: pd.DataFrame, name: str, mcid: float) -> None:
    """Where estimates.csv and contrasts.csv state the same quantity, the same number: means, P(benefit) = p_below_0,
    P(benefit > MCID) = p_below_-MCID; the posterior mean lies inside both the 95% CrI and the 94% HDI."""
    a, analysis = Ard(ard), f"{name}: primary (MAR)"
    rows = estimates[estimates["quantity"].str.contains(" - placebo mean ")]
    assert len(rows)
    for r in rows.to_dict("records"):
        c = r["quantity"].split(" mean ")[0]
        w = int(r["week"])
        assert a.value(analysis, c, w, "mean") == pytest.approx(r["mean"], abs=1e-9)
        assert a.value(analysis, c, w, "p_benefit") == pytest.approx(r["p_below_0"], abs=1e-12)
        assert a.value(analysis, c, w, "p_benefit_mcid") == pytest.approx(r[f"p_below_-{mcid:g}"], abs=1e-12)
        assert a.value(analysis, c, w, "cri_lower") < r["mean"] < a.value(analysis, c, w, "cri_upper")
        assert r["hdi_3%"] < r["mean"] < r["hdi_97%"]
    for r in contrasts[contrasts["kind"].isin(["arm_mean", "vs_control"])].to_dict("records"):
        assert a.value(analysis, r["contrast"], int(r["week"]), "mean") == pytest.approx(r["mean"], abs=1e-9)
        if r["kind"] == "vs_control":
            assert a.value(analysis, r["contrast"], int(r["week"]), "p_benefit") == pytest.approx(r["p_below_0"], abs=1e-12)


def check_ard_against_sensitivity(ard: pd.DataFrame, sensitivity: pd.DataFrame, tipping: pd.DataFrame, name: str, arms) -> None:
    """The sensitivity rows of the ARD and sensitivity.csv / tipping_point.csv: the same means and P(benefit); the MAR
    rows are the efficacy table's differences (the same draws)."""
    a = Ard(ard)
    for r in sensitivity.to_dict("records"):
        c = r.get("contrast", f"{arms[1]} - {arms[0]}")
        s = r["strategy"]
        analysis = f"{name}: MAR + delta {float(s.removeprefix('delta=')):g}" if s.startswith("delta=") else f"{name}: {s}"
        if r["variance"] == "information_anchored":
            analysis += " (information anchored)"
            assert a.value(analysis, c, int(r["week"]), "anchoring_delta") == pytest.approx(r["anchoring_delta"], abs=1e-9)
        else:
            assert r["variance"] == "conditional_mean" and pd.isna(r["anchoring_delta"])
        assert a.value(analysis, c, int(r["week"]), "mean") == pytest.approx(r["mean"], abs=1e-9)
        assert a.value(analysis, c, int(r["week"]), "p_benefit") == pytest.approx(r["p_below_0"], abs=1e-12)
        if s == "MAR":
            for stat in ("mean", "cri_lower", "cri_upper", "p_benefit", "p_benefit_mcid"):
                assert a.value(analysis, c, int(r["week"]), stat) == a.value(f"{name}: primary (MAR)", c, int(r["week"]), stat)
    tipping = tipping if "contrast" in tipping else tipping.assign(contrast=f"{arms[1]} - {arms[0]}")
    tipping = tipping if "delta_kind" in tipping else tipping.assign(delta_kind="additive")
    analyses = {"additive": (f"{name}: tipping point (MAR + delta)", "tipping_delta"),
                "multiplicative": (f"{name}: tipping point (MAR x factor)", "tipping_factor")}
    # one tipping point per kind, contrast and reported week
    for (kind, c, week), rows in tipping.groupby(["delta_kind", "contrast", "week"], sort=False):
        analysis, stat = analyses[kind]
        value = a.value(analysis, c, int(week), stat)
        saved = rows["tipping_exact"].iloc[0]
        assert (np.isnan(value) and pd.isna(saved)) or value == pytest.approx(saved, abs=1e-9)
        assert a.value(analysis, c, int(week), "tipping_threshold") == rows["threshold"].iloc[0]
    for kind, (analysis, stat) in analyses.items():
        n_tipping = ard.loc[(ard["analysis"] == analysis) & (ard["statistic"] == stat)]
        assert len(n_tipping) == tipping[tipping["delta_kind"] == kind].groupby(["contrast", "week"]).ngroups


def check_files(folder, name: str, arms: list[str], week: int, sensitivity: bool = True) -> pd.DataFrame:
    """The model's ard.csv, and each table's RTF and DOCX read back: the same cells, every number its ARD row's."""
    assert pd.read_csv(folder / name / ARD_FILE, nrows=0).columns.tolist() == list(ARD_COLUMNS)
    ard = read_ard(folder / name / ARD_FILE)
    check_ard(ard)
    stems = ["efficacy_table", *(["sensitivity_table"] if sensitivity else [])]
    for stem in stems:
        rtf, docx = (read_rtf((folder / name / f"{stem}.rtf").read_bytes()), read_docx((folder / name / f"{stem}.docx").read_bytes()))
        for part in ("title", "rows", "footnotes", "source"):  # one table, two formats
            assert rtf[part] == docx[part], part
        if stem == "efficacy_table":
            check_efficacy(rtf, ard, name, arms)
            assert rtf["title"][0] == "Change from baseline in MADRS score by visit"
            assert rtf["title"][1] == "Population: all randomised participants with a baseline MADRS score"
            assert rtf["title"][2] == f"Model: {name}" and rtf["title"][3].startswith("Estimand: difference in mean")
            assert any(n.startswith("Intercurrent events and missing data") for n in rtf["footnotes"])
        else:
            check_sensitivity(rtf, ard, name, arms, week)
            assert any(n.startswith("J2R: dropout: jump to reference") for n in rtf["footnotes"])
        assert rtf["source"].startswith(f"Source: {name}/idata.nc")
    if not sensitivity:
        assert not (folder / name / "sensitivity_table.rtf").exists()
    return ard


# ---------------------------------------------------------------- the unit tier: hand-made draws


@pytest.fixture(scope="module")
def three_arm(tmp_path_factory):
    """45 participants in three arms (placebo, low, high) with dropout, and MMRM draws made by hand (placebo_change
    added: the control arm's mean change, 0 at week 0), with the trial's dataset as a saved fit carries it."""
    ds, design = _trial(tmp_path_factory.mktemp("csr") / "k3", n_participants=45, seed=4, dropout_by_last_week=0.5,
                        intermittent_missing=0.12, treatment_arm="low", more_arms=(("high", -3.0, -3.5),))
    idata = mmrm_posterior(design, draws=50)
    post = idata.posterior
    t1 = np.minimum(design.weeks, 12) / 12
    rng = np.random.default_rng(5)
    control = -11 * t1[None, None, :] + rng.normal(0, 0.6, (post.sizes["chain"], post.sizes["draw"], len(t1))) * (design.weeks > 0)
    post["placebo_change"] = (("chain", "draw", "week"), control)
    post.attrs.update(model="mmrm", data_source=str(ds.attrs["source"]))
    idata.add_groups(trial_data=ds)
    return ds, design, idata


def _sensitivity(idata, design, options: SensitivityOptions):
    """model_sensitivity without the prior sensitivity (not this module's subject, and slow on hand-made draws)."""
    import diagnostics.sensitivity_analyses as analyses

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(analyses, "prior_sensitivity_table", lambda idata: pd.DataFrame())
        return model_sensitivity("mmrm", idata, design, options)


@pytest.fixture(scope="module")
def three_arm_tables(three_arm):
    ds, design, idata = three_arm
    sens = _sensitivity(idata, design, SensitivityOptions(deltas=(1.0, 3.5)))
    return sens, submission_tables("mmrm", idata, ds, mcid=1.5, sensitivity=sens, data_source="k3")


def _run(tables: dict[str, SubmissionTables]) -> RunDiagnostics:
    return RunDiagnostics(title="t", data_source="k3", checksum="", generated="", data_summary={}, labels=("placebo", "low", "high"),
                          models={}, comparisons={}, plain_language={}, comparison_notes=[], figures={}, versions={}, submission=tables)


@pytest.mark.unit
def test_three_arm_tables_read_back_as_the_ard_the_draws_and_the_estimates(three_arm, three_arm_tables, tmp_path):
    ds, design, idata = three_arm
    sens, tables = three_arm_tables
    assert tables.notes == {}
    report = write_outputs(_run({"mmrm": tables}), tmp_path)
    ard = check_files(tmp_path, "mmrm", ["placebo", "low", "high"], 12)
    check_ard_against_draws(ard, idata, ds, "mmrm", 1.5)
    estimates = estimates_table(idata, design.meta, mcid=1.5, change_scores=True)
    contrasts = contrasts_table(idata, design.meta, (), 1.5, change_scores=True)
    check_ard_against_tables(ard, estimates, contrasts, "mmrm", 1.5)
    check_ard_against_sensitivity(ard, sens.tables["sensitivity"], sens.tables["tipping_point"], "mmrm", ["placebo", "low", "high"])
    assert set(ard.loc[ard["statistic"] == "delta", "value"]) == {1.0, 3.5}
    text = report.read_text()
    assert '<h2 id="submission">Submission tables</h2>' in text and 'id="efficacy_table-mmrm"' in text and 'id="sensitivity_table-mmrm"' in text


@pytest.mark.unit
def test_the_ard_has_one_row_per_statistic_and_documents_every_statistic(three_arm_tables):
    _, tables = three_arm_tables
    ard = tables.ard
    assert not ard.duplicated(list(KEY)).any()
    assert set(ard["statistic"]) <= set(STATISTICS)
    assert ard["value"].dtype == float and str(ard["visit"].dtype) == "Int64"
    # per visit and arm: 4 statistics (n observed, mean, CrI); per contrast and visit: 5; per arm: n, baseline mean, SD
    weeks, arms = 6, 3
    efficacy = ard[ard["table"] == "efficacy"]
    assert len(efficacy) == 3 + arms * 3 + weeks * (arms * 4 + (arms - 1) * 5)
    sensitivity = ard[ard["table"] == "sensitivity"]
    # strategies and deltas (5 statistics), the information-anchored J2R, CR and CIR (6: and the anchoring delta), deltas,
    # tipping points (additive and multiplicative: 3 each)
    assert len(sensitivity) == (4 + 2) * weeks * (arms - 1) * 5 + 3 * weeks * (arms - 1) * 6 + 2 + 2 * (arms - 1) * 3
    check_ard(ard)
    with pytest.raises(ValueError, match="rows with the same analysis"):
        check_ard(pd.concat([ard, ard.iloc[[5]]], ignore_index=True))
    with pytest.raises(ValueError, match="undocumented statistics"):
        check_ard(ard.assign(statistic=ard["statistic"].replace({"mean": "average"})))


@pytest.mark.unit
def test_saved_sensitivity_tables_are_recomputed_to_the_same_ard_or_said_why_not(three_arm, three_arm_tables, tmp_path):
    """diagnose.py without --sensitivity: the draws behind a saved sensitivity.csv are recomputed and give the same
    ARD; a sensitivity.csv made with intercurrent events the folder does not record cannot be, and is said so (and an
    earlier sensitivity table, which the new ARD would contradict, is removed)."""
    ds, design, idata = three_arm
    sens, fresh = three_arm_tables
    folder = tmp_path / "out"
    save_idata(idata, folder / "mmrm" / "idata.nc")
    pd.DataFrame([{"quantity": "x", "p_below_-1.5": 0.5}]).to_csv(folder / "mmrm" / "estimates.csv", index=False)  # the MCID
    for name, table in sens.tables.items():
        if len(table):  # (prior sensitivity is left out here)
            table.to_csv(folder / "mmrm" / f"{name}.csv", index=False)
    (folder / "run.json").write_text(json.dumps({"models": {"mmrm": {}}, "sensitivity": {"ice": None}}))
    saved = saved_sensitivity(folder, {"mmrm": idata})
    again = saved_submission_tables(folder, {"mmrm": idata}, saved)["mmrm"]
    assert again.notes == {}
    pd.testing.assert_frame_equal(again.ard, fresh.ard)
    write_outputs(_run({"mmrm": again}), folder)
    assert (folder / "mmrm" / "sensitivity_table.rtf").is_file()

    from data.ice import IceTable

    # a sensitivity.csv made with intercurrent events of a table the folder does not keep (fit.py --ice elsewhere.csv)
    dropped = [str(p) for p, a in zip(ds["participant"].values, ds["arm_index"].values) if a == 1][:4]
    ice = IceTable(tuple(dropped), (4,) * 4, ("J2R",) * 4, source="elsewhere.csv")
    other = _sensitivity(idata, design, SensitivityOptions(ice=ice, deltas=(1.0, 3.5)))
    other.tables["sensitivity"].to_csv(folder / "mmrm" / "sensitivity.csv", index=False)
    (folder / "run.json").write_text(json.dumps({"models": {"mmrm": {}}, "sensitivity": {"ice": {"source": "elsewhere.csv", "participants": 4}}}))
    lost = saved_submission_tables(folder, {"mmrm": idata}, saved_sensitivity(folder, {"mmrm": idata}))["mmrm"]
    assert "cannot be recomputed" in lost.notes["sensitivity"] and "--sensitivity" in lost.notes["sensitivity"]
    assert not (lost.ard["table"] == "sensitivity").any()  # the earlier ard.csv holds other numbers: not kept
    report = write_outputs(_run({"mmrm": lost}), folder)
    assert not (folder / "mmrm" / "sensitivity_table.rtf").exists() and not (folder / "mmrm" / "sensitivity_table.docx").exists()
    check_files(folder, "mmrm", ["placebo", "low", "high"], 12, sensitivity=False)
    assert "No sensitivity table: the saved mmrm/sensitivity.csv was made with options" in report.read_text()
    # ... but when the fit's run wrote its ard.csv (fit.py --sensitivity --ice elsewhere.csv), diagnose.py keeps its rows
    with_ice = submission_tables("mmrm", idata, ds, mcid=1.5, sensitivity=other, data_source=str(ds.attrs["source"]))
    assert any("elsewhere.csv" in n for n in with_ice.sensitivity().footnotes)
    write_outputs(_run({"mmrm": with_ice}), folder)
    kept = saved_submission_tables(folder, {"mmrm": idata}, saved_sensitivity(folder, {"mmrm": idata}))["mmrm"]
    assert kept.notes == {} and kept.texts["ice_source"] == "elsewhere.csv"
    pd.testing.assert_frame_equal(kept.ard, with_ice.ard)
    assert kept.sensitivity() == with_ice.sensitivity()


@pytest.mark.unit
def test_a_model_without_per_arm_means_gets_a_note_not_a_table(three_arm, tmp_path):
    ds, _, idata = three_arm
    post = idata.posterior.drop_vars(["placebo_change"])
    tables = submission_tables("biomarker_change", post, ds)
    assert tables.files() == {} and tables.layouts() == {}
    assert "no mean MADRS change from baseline per arm and visit" in tables.notes["efficacy"]
    report = write_outputs(_run({"biomarker_change": tables}), tmp_path)
    assert not (tmp_path / "biomarker_change" / ARD_FILE).exists()
    assert "No efficacy table: biomarker_change has no mean MADRS change" in report.read_text()
    no_sens = submission_tables("mmrm", idata, ds)
    assert "were not run" in no_sens.notes["sensitivity"] and set(no_sens.layouts()) == {"efficacy_table"}


@pytest.mark.unit
def test_numbers_are_formatted_as_a_study_report_prints_them_and_rtf_text_is_escaped():
    assert fmt.mean_cri(-8.43, -9.71, -7.12) == "-8.4 (-9.7, -7.1)"
    assert fmt.mean_cri(-0.04, -1.0, 0.96) == "0.0 (-1.0, 1.0)"  # never "-0.0"
    assert fmt.mean_sd(27.93, 5.84) == "27.9 (5.8)"
    assert [fmt.probability(p) for p in (0.9534, 0.0004, 0.9996, 1.0, 0.0, float("nan"))] == ["0.953", "<0.001", ">0.999", ">0.999",
                                                                                              "<0.001", fmt.MISSING]
    assert fmt.count(126.0) == "126" and fmt.points(4.37) == "4.4" and fmt.setting(2.0) == "2" and fmt.setting(0.975) == "0.975"
    text = "Café {arm} \\ ≥ 1 😀"
    escaped = fmt.rtf_text(text)
    assert escaped.isascii() and _unescape(escaped) == text
    layout = fmt.TableLayout(title=("T é",), header=((("a", 1), ("b {x}", 1)),), body=(("r ≥", "1"),), widths=(1, 1), footnotes=("n",),
                             source="s")
    doc = read_rtf(fmt.rtf(layout))
    assert doc["title"] == ["T é"] and doc["rows"] == [["a", "b {x}"], ["r ≥", "1"]] and doc["footnotes"] == ["n"]
    assert read_docx(fmt.docx(layout))["rows"] == [["a", "b {x}"], ["r ≥", "1"]]
    assert "<td class=\"label\">r ≥</td>" in fmt.html(layout)


# ---------------------------------------------------------------- the smoke tier: fit.py and diagnose.py


@pytest.fixture(scope="module")
def two_arm_run(small_trial_dir, tmp_path_factory):
    """The small trial's MMRM with --mcid 3 and the sensitivity analyses at weeks 16 and 12 (--sensitivity-weeks): one fit
    for the two-arm tables and for the weeks asked for (tests/test_sensitivity_anchored.py's subject)."""
    out = tmp_path_factory.mktemp("csr2") / "out"
    code = fit.main(["--data", str(small_trial_dir), "--model", "mmrm", "--draws", "100", "--tune", "200", "--chains", "2",
                     "--prior-draws", "10", "--seed", "3", "--jobs", "1", "--mcid", "3", "--sensitivity", "--sensitivity-weeks", "16",
                     "12", "--out", str(out), "--quiet"])
    return code, out


@pytest.mark.smoke
def test_a_two_arm_fit_writes_tables_that_read_back_as_its_draws_and_estimates(two_arm_run, small_trial, tmp_path):
    code, out = two_arm_run
    assert code == 0
    ard = check_files(out, "mmrm", ["placebo", "nac"], [12, 16])
    idata = load_fit(out / "mmrm" / "idata.nc", complete=False)
    check_ard_against_draws(ard, idata, small_trial, "mmrm", 3.0)
    check_ard_against_tables(ard, pd.read_csv(out / "mmrm" / "estimates.csv"), pd.read_csv(out / "mmrm" / CONTRASTS_FILE), "mmrm", 3.0)
    check_ard_against_sensitivity(ard, pd.read_csv(out / "mmrm" / "sensitivity.csv"), pd.read_csv(out / "mmrm" / "tipping_point.csv"),
                                  "mmrm", ["placebo", "nac"])
    timings = json.loads((out / "run.json").read_text())["models"]["mmrm"]["timings"]
    assert 0 < timings["tables_s"] < 5 and 0 < timings["tables_render_s"] < 10
    assert 'id="efficacy_table-mmrm"' in (out / "report.html").read_text()
    # diagnose.py on the saved folder: the sensitivity draws recomputed, the same ARD to the last bit
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for stale in ("ard.csv", "efficacy_table.rtf", "sensitivity_table.docx"):
        (copy / "mmrm" / stale).unlink()
    assert diagnose.main([str(copy), "--quiet"]) == 0
    assert (copy / "mmrm" / ARD_FILE).read_bytes() == (out / "mmrm" / ARD_FILE).read_bytes()
    assert (copy / "mmrm" / "efficacy_table.rtf").read_bytes() == (out / "mmrm" / "efficacy_table.rtf").read_bytes()
    assert (copy / "mmrm" / "sensitivity_table.docx").is_file()


@pytest.mark.smoke
def test_fit_and_diagnose_report_the_weeks_asked_for(two_arm_run, tmp_path):
    """--sensitivity-weeks 16 12: the sensitivity and tipping-point rows, run.json, the report and the tables of both weeks,
    each reference-based strategy's information-anchored SD the MAR SD; diagnose.py with the follow-up only."""
    from diagnostics.sensitivity import REFERENCE_BASED

    code, out = two_arm_run
    assert code == 0
    sens, tipping = pd.read_csv(out / "mmrm" / "sensitivity.csv"), pd.read_csv(out / "mmrm" / "tipping_point.csv")
    assert sorted(set(sens["week"])) == [12, 16] and sorted(set(tipping["week"])) == [12, 16]
    assert tipping.groupby(["week", "delta_kind"])["tipping_message"].nunique().tolist() == [1, 1, 1, 1]
    for week in (12, 16):
        at = sens[sens["week"] == week].set_index(["strategy", "variance"])
        for strategy in REFERENCE_BASED:
            assert at.loc[(strategy, "information_anchored"), "sd"] == pytest.approx(at.loc[("MAR", "conditional_mean"), "sd"], rel=1e-9)
            assert at.loc[(strategy, "information_anchored"), "mean"] == pytest.approx(at.loc[(strategy, "conditional_mean"), "mean"])
    assert json.loads((out / "run.json").read_text())["sensitivity"]["weeks"] == [12, 16]
    report = (out / "report.html").read_text()
    assert "<b>Week 12 (end of treatment)</b>" in report and "<b>Week 16 (off-treatment follow-up)</b>" in report
    ard = check_files(out, "mmrm", ["placebo", "nac"], [12, 16])
    check_ard_against_sensitivity(ard, sens, tipping, "mmrm", ["placebo", "nac"])
    # diagnose.py: the follow-up only
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert diagnose.main([str(copy), "--sensitivity", "--sensitivity-weeks", "16", "--quiet"]) == 0
    assert set(pd.read_csv(copy / "mmrm" / "sensitivity.csv")["week"]) == {16}
    assert set(pd.read_csv(copy / "mmrm" / "tipping_point.csv")["week"]) == {16}
    check_files(copy, "mmrm", ["placebo", "nac"], 16)


@pytest.fixture(scope="module")
def three_arm_run(tmp_path_factory):
    """The bundled three-arm dose trial (data/dose) with the sensitivity analyses and two contrasts beside the arms' own:
    one fit for its tables and for the three-arm estimates, contrasts.csv and report below."""
    out = tmp_path_factory.mktemp("csr3") / "out"
    code = fit.main(["--data", str(DOSE_DATASET), "--model", "treatment", "--draws", "100", "--tune", "200", "--chains", "2",
                     "--prior-draws", "10", "--seed", "2", "--jobs", "1", "--sensitivity", "--out", str(out), "--quiet",
                     "--contrast", "high - low", "--contrast", "pooled active - placebo"])
    return code, out


@pytest.mark.smoke
def test_a_three_arm_fit_writes_tables_of_every_arm(three_arm_run):
    from data import load_dataset

    code, out = three_arm_run
    assert code == 0
    arms = ["placebo", "low", "high"]
    ard = check_files(out, "treatment", arms, 12)
    idata = load_fit(out / "treatment" / "idata.nc", complete=False)
    check_ard_against_draws(ard, idata, load_dataset(DOSE_DATASET), "treatment", 2.0)
    check_ard_against_tables(ard, pd.read_csv(out / "treatment" / "estimates.csv"), pd.read_csv(out / "treatment" / CONTRASTS_FILE),
                             "treatment", 2.0)
    check_ard_against_sensitivity(ard, pd.read_csv(out / "treatment" / "sensitivity.csv"),
                                  pd.read_csv(out / "treatment" / "tipping_point.csv"), "treatment", arms)
    assert set(ard.loc[ard["statistic"] == "n", "value"]) == {90.0}


@pytest.mark.smoke
def test_a_three_arm_fit_writes_contrasts_and_a_report_of_every_arm(three_arm_run):
    code, out = three_arm_run
    assert code == 0
    table = pd.read_csv(out / "treatment" / CONTRASTS_FILE)
    assert set(table["kind"]) == {"arm_mean", "vs_control", "contrast", "dose_trend", "p_best"}
    assert {"high - low", "pooled active - placebo", "low - placebo", "high - placebo", "dose trend"} <= set(table["contrast"])
    assert table.loc[table["kind"] == "p_best", "mean"].sum() == pytest.approx(1.0)
    est = pd.read_csv(out / "treatment" / "estimates.csv")
    assert est["quantity"].tolist()[:4] == [f"{a} - placebo mean MADRS at week {w}" for a in ("low", "high") for w in (12, 16)]
    ppc = pd.read_csv(out / "treatment" / "ppc_trajectory.csv")
    assert list(dict.fromkeys(ppc["arm"])) == ["placebo", "low", "high"]  # the checks of every arm
    report = (out / "report.html").read_text()
    for figure in ("treatment: contrasts", "treatment: trajectory", "treatment: effects"):
        assert f'alt="{figure}"' in report, figure
    assert (out / "summary" / "treatment_contrasts.png").is_file()
    assert "2 active arms, each compared with it: <b>low</b>, <b>high</b>" in report and "P(best arm at week 12" in report


@pytest.mark.slow
def test_diagnose_recomputes_the_contrasts_of_a_three_arm_folder(three_arm_run, tmp_path, capsys):
    _, out = three_arm_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = (copy / "treatment" / CONTRASTS_FILE).read_bytes()
    assert diagnose.main([str(copy), "--quiet"]) == 0  # without --contrast: the saved table, untouched
    assert (copy / "treatment" / CONTRASTS_FILE).read_bytes() == before
    assert diagnose.main([str(copy), "--quiet", "--contrast", "bogus - low"]) == 2 and "unknown arm 'bogus'" in capsys.readouterr().err
    assert diagnose.main([str(copy), "--quiet", "--contrast", "mean active - placebo"]) == 0
    table = pd.read_csv(copy / "treatment" / CONTRASTS_FILE)
    assert "mean active - placebo" in set(table["contrast"]) and "high - low" not in set(table["contrast"])
    same = table[table["kind"] == "vs_control"].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, pd.read_csv(out / "treatment" / CONTRASTS_FILE).query("kind == 'vs_control'").reset_index(drop=True))


# ---------------------------------------------------------------- the slow tier: a rendered page


def _soffice() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


@pytest.mark.slow
def test_the_tables_render_to_pdf_with_libreoffice(three_arm_tables, tmp_path):
    """The RTF and DOCX files open in LibreOffice (headless) and print to PDF pages with the table's text."""
    exe = _soffice()
    if exe is None:
        pytest.skip("LibreOffice is not installed (Debian: apt-get install libreoffice-writer-nogui)")
    _, tables = three_arm_tables
    files = tables.files()
    names = {"efficacy_table.rtf": "efficacy_rtf.rtf", "efficacy_table.docx": "efficacy_docx.docx", "sensitivity_table.rtf": "sensitivity_table.rtf"}
    for name, copy in names.items():
        (tmp_path / copy).write_bytes(files[name])
    res = subprocess.run([exe, "--headless", f"-env:UserInstallation=file://{tmp_path}/profile", "--convert-to", "pdf", "--outdir",
                          str(tmp_path / "pdf"), *[str(tmp_path / n) for n in names.values()]], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for copy in names.values():
        data = (tmp_path / "pdf" / copy.rsplit(".", 1)[0]).with_suffix(".pdf").read_bytes()
        assert data.startswith(b"%PDF") and len(data) > 5_000 and re.search(rb"/Type\s*/Page\b", data)
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "pdf" / "sensitivity_table.pdf"), "-"], capture_output=True,
                              text=True, timeout=60).stdout
        layout = tables.sensitivity()
        assert "J2R: jump to reference" in text and layout.body[0][1] in text
