"""ADaM through the command lines: `python -m data.adam` writes the folder or refuses (exit 2, the message, nothing
written); fit.py and diagnose.py refuse bad ADaM files and options before any fit; `python -m data.adam_export`; and a
tiny fit from ADaM files gives the estimates.csv of the same fit from the CSV folder, byte for byte, with the ADaM files
named as its data and the derived records it left out in run.json; diagnose.py takes the intercurrent events from the ADSL."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pandas as pd
import pytest

import diagnose
import fit
from data import load_dataset
from data.adam import main as adam_main
from data.adam_export import DATASET_LABELS, adam_tables, write_adam, write_xpt
from data.adam_export import main as export_main
from data.meta import META_FILE


@pytest.fixture(scope="module")
def adam_dir(small_trial_dir, tmp_path_factory):
    """The 60-participant trial of conftest as ADaM files."""
    return write_adam(small_trial_dir, tmp_path_factory.mktemp("adam") / "small")


def files(folder):
    return [str(folder / "adsl.xpt"), str(folder / "adqs.xpt")]


def bad_copy(tmp_path, small_trial_dir, change):
    """The trial's ADaM files with one alteration of the tables."""
    tables, config = adam_tables(small_trial_dir, "SMALL")
    change(tables)
    folder = tmp_path / "bad"
    folder.mkdir()
    for name, frame in tables.items():
        write_xpt(frame, folder / f"{name}.xpt", name.upper(), DATASET_LABELS[name])
    (folder / META_FILE).write_text(config, encoding="utf-8")
    return folder


def no_paramcd(t):
    t["adqs"] = t["adqs"].drop(columns="PARAMCD")


def duplicate(t):
    q = t["adqs"]
    t["adqs"] = pd.concat([q, q[(q["AVISIT"] == "Week 2") & (q["DTYPE"] == "")].iloc[[0]].assign(AVAL=0.0)], ignore_index=True)


def no_baseline(t):
    q = t["adqs"]
    t["adqs"] = q[~((q["USUBJID"] == "SMALL-P0005") & (q["ABLFL"] == "Y"))]


def nac_out(t):
    t["adsl"].loc[t["adsl"]["TRT01P"] == "nac", "ITTFL"] = "N"


def unmapped(t):
    t["adqs"].loc[t["adqs"]["AVISIT"] == "Unscheduled", "ANL01FL"] = "Y"


CHECKS = {
    "missing PARAMCD": (no_paramcd, "has no variable PARAMCD"),
    "duplicate records": (duplicate, "several analysed records for one participant and visit: SMALL-P"),
    "no baseline": (no_baseline, "no baseline record (ABLFL = 'Y'"),
    "arm without participants": (nac_out, "TRT01P 'nac' has 0 participant(s) with ITTFL = 'Y'"),
    "visit without week": (unmapped, "'Unscheduled'"),
}


@pytest.mark.unit
def test_python_m_data_adam_writes_the_folder_and_says_what_it_left_out(adam_dir, small_trial_dir, tmp_path, capsys):
    out = tmp_path / "folder"
    assert adam_main([*files(adam_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "60 analysed (ITTFL = 'Y')" in printed and "DTYPE = LOCF" in printed and f"wrote {out}/" in printed
    ds = load_dataset(out)
    assert ds.equals(load_dataset(small_trial_dir))
    assert json.loads((out / "adam.json").read_text())["excluded"]
    (tmp_path / "empty").mkdir()  # an empty folder is written into; a non-empty one only with --force
    assert adam_main([*files(adam_dir), "--out", str(tmp_path / "empty")]) == 0
    assert adam_main([*files(adam_dir), "--out", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert adam_main([*files(adam_dir), "--out", str(out), "--force", "--population-flag", "FASFL"]) == 0


@pytest.mark.unit
@pytest.mark.parametrize("check", list(CHECKS))
def test_python_m_data_adam_refuses_each_bad_input_and_writes_nothing(check, small_trial_dir, tmp_path, capsys):
    change, words = CHECKS[check]
    bad = bad_copy(tmp_path, small_trial_dir, change)
    out = tmp_path / "out"
    assert adam_main([*files(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid dataset") and words in err and "Fix:" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.unit
def test_an_unreadable_file_is_refused_by_every_command(adam_dir, tmp_path, capsys):
    bad = tmp_path / "adqs.xpt"
    bad.write_bytes(b"HEADER RECORD" + b"\0" * 300)
    args = [str(adam_dir / "adsl.xpt"), str(bad)]
    assert adam_main([*args, "--out", str(tmp_path / "o")]) == 2
    assert fit.main(["--adam", *args, "--model", "treatment", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("adqs.xpt: the BDS dataset could not be read as a SAS transport file") == 2
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


@pytest.mark.unit
@pytest.mark.parametrize("check", ["missing PARAMCD", "arm without participants"])
def test_fit_refuses_bad_adam_files_before_any_fit(check, small_trial_dir, tmp_path, capsys):
    change, words = CHECKS[check]
    bad = bad_copy(tmp_path, small_trial_dir, change)
    out = tmp_path / "results"
    assert fit.main(["--adam", *files(bad), "--model", "treatment", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and not out.exists()


@pytest.mark.unit
@pytest.mark.parametrize("argv, words", [
    (["--param", "MADRS"], "--param applies only with --adam ADSL BDS"),
    (["--data", "data/default", "--adam", "a.xpt", "b.xpt"], "--data and --adam are alternatives"),
    (["--adam", "a.xpt", "b.xpt", "--ice-strategy", "*=MAR"], "--ice-strategy applies only with --sensitivity"),
    (["--adam", "a.xpt", "b.xpt", "--sensitivity", "--ice-strategy", "*=MAR", "--ice", "ice.csv"],
     "--ice and --ice-strategy are alternatives"),
    (["--adam", "a.xpt", "b.xpt", "--sensitivity", "--ice-strategy", "ADVERSE EVENT=JTR"],
     "--ice-strategy: the intercurrent-event strategy "
     "map gives 'ADVERSE EVENT' the strategy 'JTR'; one of MAR, J2R, CR, CIR"),
    (["--adam", "a.xpt", "b.xpt", "--scale", "60:0"], "--scale: the scale's MIN must be below its MAX"),
    (["--adam", "a.xpt", "b.xpt", "--adam-var", "subject=SUBJID"], "--adam-var: unknown variable role 'subject'"),
    (["--adam", "a.xpt", "b.xpt", "--markers", "adlb.xpt"], "--markers takes the ADLB file and at least one PARAMCD"),
])
def test_fit_refuses_bad_adam_options(argv, words, tmp_path, capsys):
    assert fit.main([*argv, "--out", str(tmp_path / "r")]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.unit
def test_diagnose_takes_adam_files_only_for_the_intercurrent_events(adam_dir, tmp_path, capsys):
    assert diagnose.main([str(tmp_path), "--adam", *files(adam_dir)]) == 2
    assert "--adam in diagnose.py gives the intercurrent events of the sensitivity analyses" in capsys.readouterr().err
    assert diagnose.main([str(tmp_path), "--sensitivity", "--adam", *files(adam_dir), "--ice", "x.csv"]) == 2
    assert "--ice and --adam are alternatives" in capsys.readouterr().err
    assert diagnose.main([str(tmp_path), "--sensitivity", "--adam", *files(adam_dir), "--ice-strategy", "*=J2R"]) == 2
    assert "holds no fitted model" in capsys.readouterr().err


@pytest.mark.unit
def test_python_m_data_adam_export(small_trial_dir, tmp_path, capsys):
    out = tmp_path / "adam"
    assert export_main([str(small_trial_dir), "--out", str(out), "--studyid", "S1"]) == 0
    assert "adsl.xpt" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["adlb.xpt", "adqs.xpt", "adsl.xpt", META_FILE]
    assert export_main([str(small_trial_dir), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


FIT = ["--model", "mmrm", "--draws", "100", "--tune", "200", "--chains", "2", "--seed", "1", "--prior-draws", "20", "--jobs", "1",
       "--quiet"]


@pytest.mark.unit
def test_fit_trial_reads_adam_options_and_their_intercurrent_events(adam_dir, tmp_path, monkeypatch):
    """fit_trial(AdamOptions): the files are read before any fit; with sensitivity the ADSL's intercurrent events are the ice
    table; without it the end-of-treatment variables are not even read."""
    import deptrial
    from deptrial import orchestrate

    seen = {}

    def stop(specs, ds, design, source, changes, settings, tmp, out, **kw):
        seen.update(source=source, changes=changes, options=kw["sensitivity"])
        raise RuntimeError("stopped before the fits")

    monkeypatch.setattr(orchestrate, "run_models", stop)
    opts = deptrial.AdamOptions(adam_dir / "adsl.xpt", adam_dir / "adqs.xpt", ice_strategy="ADVERSE EVENT=J2R,*=MAR")
    with pytest.raises(RuntimeError, match="stopped"):
        deptrial.fit_trial(opts, ["mmrm"], out=tmp_path / "r", sensitivity=True)
    ice = seen["options"].ice
    assert ice.source == "adsl.xpt (EOTSTT, DCTREAS)" and len(ice) > 0 and set(ice.strategy) <= {"J2R", "MAR"}
    assert seen["source"].startswith("ADaM ") and any(c["action"] == "intercurrent_events" for c in seen["changes"])
    no_end = replace(opts, variables={"trtedt": "NOSUCHVAR"})  # a last-dose variable the ADSL does not have
    with pytest.raises(RuntimeError, match="stopped"):
        deptrial.fit_trial(no_end, ["mmrm"], out=tmp_path / "r2")
    assert seen["options"] is None
    with pytest.raises(deptrial.DatasetError, match="has no variable NOSUCHVAR"):
        deptrial.fit_trial(no_end, ["mmrm"], out=tmp_path / "r3", sensitivity=True)
    assert not (tmp_path / "r3").exists()


@pytest.fixture(scope="module")
def fits(adam_dir, small_trial_dir, tmp_path_factory):
    """The same tiny MMRM fit from the CSV folder and from its ADaM files."""
    root = tmp_path_factory.mktemp("fits")
    from_csv, from_adam = root / "csv", root / "adam"
    assert fit.main(["--data", str(small_trial_dir), *FIT, "--out", str(from_csv)]) == 0
    assert fit.main(["--adam", *files(adam_dir), *FIT, "--out", str(from_adam)]) == 0
    return from_csv, from_adam


STRATEGY = "ADVERSE EVENT=J2R,LACK OF EFFICACY=J2R,*=MAR"


@pytest.mark.smoke
def test_a_fit_from_adam_files_is_the_fit_from_the_csv_folder(fits, adam_dir):
    """Same seed, same estimates.csv and contrasts.csv bytes; run.json names the ADaM files and keeps the derived records
    left out."""
    from_csv, from_adam = fits
    for table in ("estimates.csv", "contrasts.csv"):
        assert (from_adam / "mmrm" / table).read_text() == (from_csv / "mmrm" / table).read_text(), table
    run = json.loads((from_adam / "run.json").read_text())
    assert run["data"].startswith(f"ADaM {(adam_dir / 'adsl.xpt').resolve()} + {(adam_dir / 'adqs.xpt').resolve()} (PARAMCD MADRS")
    derived = [c for c in run["data_changes"] if c["action"] == "derived"]
    assert {c["text"].split("DTYPE = ")[1][:4] for c in derived} == {"LOCF", "BOCF"}


@pytest.mark.smoke
def test_diagnose_takes_the_intercurrent_events_from_the_adsl_of_the_fitted_trial(fits, adam_dir, tmp_path, capsys):
    """On the fit from the CSV folder, the ADaM files of the same trial give the intercurrent events; those of another
    trial are refused."""
    from_csv, _ = fits
    copy = tmp_path / "again"
    shutil.copytree(from_csv, copy)
    assert diagnose.main([str(copy), "--sensitivity", "--adam", *files(adam_dir), "--ice-strategy", STRATEGY, "--quiet"]) == 0
    assert "intercurrent events of adsl.xpt (EOTSTT, DCTREAS)" in (copy / "mmrm" / "sensitivity.csv").read_text()
    other = write_adam("data/dose", tmp_path / "dose")
    assert diagnose.main([str(copy), "--sensitivity", "--adam", *files(other), "--ice-strategy", "*=MAR"]) == 2
    assert "are not the trial of the fits" in capsys.readouterr().err
