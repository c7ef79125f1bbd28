"""The benchmark's ratio and scaling tables (pure functions; the fits themselves run in benchmarks/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_fit  # noqa: E402


def _res(path, scale, run, ess_s, wall, sample, **extra):
    return {"path": path, "scale": scale, "run": run, "ess_per_s_sampling": ess_s, "wall_s": wall, "sample_s": sample, **extra}


@pytest.mark.unit
def test_ratios_compare_like_with_like():
    results = [
        _res("ours", 1, "cold", 600.0, 70.0, 3.5),
        _res("bambi", 1, "cold", 50.0, 30.0, 29.0),
        _res("stan", 1, "cold", 20.0, 110.0, 48.0),
        _res("numpyro", 1, "cold", 40.0, 25.0, 20.0),
        _res("pymc", 1, "warm", 15.0, 45.0, 43.0),  # other run: no ratio against it for cold fits
        {"path": "pymc", "scale": 1, "run": "cold", "error": "timed out"},
        _res("ours", 10, "cold", 300.0, 120.0, 35.0),
    ]
    bench_fit.add_ratios(results)
    ours = results[0]
    assert ours["vs_bambi"] == pytest.approx(12.0) and ours["vs_stan"] == pytest.approx(30.0)
    assert ours["vs_numpyro"] == pytest.approx(15.0) and "vs_pymc" not in ours
    assert "vs_bambi" not in results[-1], "no bambi fit at scale 10"
    text = bench_fit.table(results)
    assert "error: timed out" in text and "| ours | 1 | cold |" in text


@pytest.mark.unit
def test_rows_without_ess_take_no_ratio_and_give_none():
    """The REML reference (times and estimates, no ESS) beside the samplers of equal settings: no ratio, no failure."""
    results = [
        {"path": "reml", "scale": 1, "run": "cold", "wall_s": 0.02},
        _res("ours", 1, "cold", 230.0, 9.0, 1.3),
        _res("pymc", 1, "cold", 2.3, 840.0, 780.0),
    ]
    bench_fit.add_ratios(results)
    assert results[1]["vs_pymc"] == pytest.approx(100.0)
    assert "vs_pymc" not in results[0] and "| reml | 1 | cold |" in bench_fit.table(results)


@pytest.mark.unit
def test_scaling_table_divides_by_scale_one():
    results = [_res("ours", 1, "cold", 600.0, 70.0, 4.0, peak_rss_mb=1500.0), _res("ours", 10, "cold", 300.0, 140.0, 40.0, peak_rss_mb=3000.0)]
    text = bench_fit.scaling_table(results)
    assert "| ours | cold | 10 | 140.0 | 2.0 | 40.0 | 10.0 | 3000.0 |" in text
    assert bench_fit.scaling_table(results[:1]) == ""


@pytest.mark.unit
def test_results_md_opens_with_date_machine_and_load():
    meta = {"date": "2026-11-28T10:00:00+00:00", "machine": "x86_64 test cpu", "cpus": 2, "load_start": [0.1, 0.2, 0.3],
            "load_end": [1.0, 1.1, 1.2], "draws": 10, "tune": 20, "chains": 2, "seed": 1}
    first = bench_fit.render(meta, [_res("ours", 1, "cold", 1.0, 2.0, 1.0)]).splitlines()[0]
    assert "2026-11-28T10:00:00" in first and "x86_64 test cpu" in first and "2 CPUs" in first
    assert "0.10, 0.20, 0.30" in first and "1.00, 1.10, 1.20" in first and "2 chains x 10 draws after 20" in first
    assert "load average at the start not recorded" in bench_fit.header({})
