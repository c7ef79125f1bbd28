"""The HTML report and diagnose.py: content, self-containment, rendering in headless Chromium.

The run is built from hand-made fits (tests/test_diagnostics.py `trial_idata`), so no sampling is needed.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from test_diagnostics import arm_of, trial_idata

import diagnose
from diagnostics.convergence import RHAT_MAX
from diagnostics.outputs import write_outputs
from diagnostics.run import diagnose_run
from inference.idata_io import save_idata

ESTIMATES = pd.DataFrame(
    [
        {"quantity": "nac - placebo mean MADRS at week 8", "week": 8, "marker": "", "unit": "MADRS points", "mean": -1.2, "sd": 0.8,
         "hdi_3%": -2.7, "hdi_97%": 0.3, "p_below_0": 0.93, "mcse_mean": 0.01, "p_below_-2": 0.16},
    ]
)


@pytest.fixture(scope="module")
def fits():
    truth = trial_idata(seed=61, n=100)
    wide = trial_idata(seed=62, n=100, pred_sd=7.0, y=truth.observed_data["y"].values)
    # the effect summaries by week that trajectory models define (truth: 26 - 1.2 week, - week / 8 on treatment)
    rng = np.random.default_rng(0)
    weeks = np.array([0, 4, 8])
    shape = (truth.posterior.sizes["chain"], truth.posterior.sizes["draw"], len(weeks))
    truth.posterior["placebo_change"] = (("chain", "draw", "week"), -1.2 * weeks + rng.normal(0, 0.3, shape) * (weeks > 0))
    truth.posterior["nac_effect"] = (("chain", "draw", "week"), -weeks / 8 + rng.normal(0, 0.4, shape) * (weeks > 0))
    truth.posterior = truth.posterior.assign_coords(week=weeks)
    return {"truth": truth, "wide": wide}


@pytest.fixture(scope="module")
def rendered(fits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    change = trial_idata(seed=63, n=100)
    change.observed_data["y"] = change.observed_data["y"] - 26  # e.g. a change-score model: other observations
    run = diagnose_run({**fits, "change": change}, {"truth": ESTIMATES}, title="Hand-built trial", log=lambda m: None)
    path = write_outputs(run, folder)
    return run, folder, path, path.read_text(encoding="utf-8")


@pytest.mark.unit
def test_report_has_every_section_and_is_self_contained(rendered):
    run, folder, path, text = rendered
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # data summary: participants by arm, visits and dropout by week, biomarker availability
    assert "100 participants (nac: 50, placebo: 50)" in text
    assert "Visits observed and dropout by week" in text and "No biomarkers in this dataset." in text
    # convergence table and verdict with the named thresholds
    assert f"R-hat &le; {RHAT_MAX}" in text and 'class="pass">PASS' in text
    # effect estimates with probability statements
    assert "posterior probability that the treatment arm is better (difference &lt; 0): 0.93" in text
    assert "that the benefit exceeds 2 points: 0.16" in text
    # PPC: the miscalibrated model's flags are listed, the calibrated one has none
    assert "LOO-PIT not uniform" in text and "No check flagged" in text
    # LOO comparison with its plain-language line; priors
    assert html.escape(run.plain_language["participant"]) in text and "&#x27;truth&#x27; is clearly preferred" in text
    assert "Normal(mu=30, sigma=15)" in text and "mid-scale" in text
    # a model fitted to other observations is reported but kept out of the comparison, with the reason
    assert "not compared with truth, wide: change fitted to different observations" in text
    assert list(run.comparisons["participant"].index) == ["truth", "wide"] and 'id="model-change"' in text
    # images embedded, nothing fetched from anywhere
    n_img = len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,[A-Za-z0-9+/=]+">', text))
    n_answer = sum(len(f) for f in run.answer_figures.values())
    assert n_img == sum(len(m.figures) for m in run.models.values()) + len(run.figures) + n_answer and n_img >= 10
    # the answer first: the effects forest and the fitted trajectories lead, before the data and the comparison
    assert set(run.answer_figures["truth"]) == {"effects", "trajectory"}
    first_img = text.index("<img ")
    assert text.index('id="summary"') < first_img < text.index("<h2>Data</h2>") < text.index('id="comparison"')
    assert text[first_img:first_img + 40].startswith('<img alt="truth: effects"')
    assert "nac - placebo difference in mean score (below 0 favours nac) at week 8: -1.20 points (94% HDI -2.70 to 0.30), P(benefit) 0.93, P(benefit &gt; 2) 0.16." in text
    assert "This model has no nac - placebo difference" in text  # wide: no effect rows
    for png in ("truth_effects.png", "truth_trajectory.png"):
        assert (folder / "summary" / png).is_file(), png
    assert not re.search(r'(src|href)="(https?:|//|file:)', text) and "<script" not in text and "<link" not in text
    for name in ("comparison_participant.csv", "comparison_visit.csv", "comparison.txt", "truth/ppc_trajectory.csv", "wide/loo_participant.csv", "wide/figures/loo_pit.png"):
        assert (folder / name).is_file(), name
    table = pd.read_csv(folder / "comparison_participant.csv", index_col=0)
    assert table.index[0] == "truth" and table["weight"].sum() == pytest.approx(1.0)


def _observed_means(idata) -> dict[tuple[str, int], float]:
    """Mean observed score by arm and week, straight from the fit's observed and constant data."""
    c = idata.constant_data
    y, week = idata.observed_data["y"].values, c["obs_week"].values
    treated = arm_of(idata)[c["obs_participant"].values.astype(int)]
    return {(arm, int(w)): float(y[(treated == t) & (week == w)].mean()) for t, arm in ((0, "placebo"), (1, "nac")) for w in np.unique(week)}


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib Figures the plotting functions draw, kept as they are turned into PNG bytes."""
    from diagnostics import plots

    figures, to_png = [], plots.to_png

    def keep(fig, **kwargs):
        figures.append(fig)
        return to_png(fig, **kwargs)

    monkeypatch.setattr(plots, "to_png", keep)
    return figures


def _vertical_lines(ax) -> set[float]:
    return {float(line.get_xdata()[0]) for line in ax.get_lines() if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]}


@pytest.mark.unit
def test_the_figures_draw_the_estimates_the_posterior_means_and_the_observed_means(fits, rendered, drawn):
    """Redrawn from the run's own tables, each figure of the report holds the numbers it shows: the effects forest plot
    the estimate and its HDI, the fitted trajectories the posterior means (observed baseline + placebo change, + NAC
    effect), and both trajectory figures the observed means of the data; the PNGs are the report's, byte for byte."""
    from diagnostics import plots

    run, folder, _, _ = rendered
    truth = fits["truth"]
    observed = _observed_means(truth)
    weeks = [0, 4, 8]
    answer = run.answers["truth"]
    # the effects forest plot: the estimate of ESTIMATES (mean -1.2, 94% HDI -2.7 to 0.3), 0 and the MCID (2) marked
    png = plots.effects_forest_plot(answer, run.labels)
    ax = drawn[-1].axes[0]
    (points,) = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert points.get_xdata().tolist() == [-1.2]
    (segment,) = ax.collections[0].get_segments()
    assert segment[:, 0].tolist() == [-2.7, 0.3] and segment[0, 1] == segment[1, 1] == points.get_ydata()[0]
    assert _vertical_lines(ax) == {0.0, -2.0}
    assert "P(benefit) 0.93, P(> MCID) 0.16" in ax.get_yticklabels()[0].get_text()
    assert png == (folder / "summary" / "truth_effects.png").read_bytes()
    # the fitted trajectories: posterior means of the fit about the observed mean baseline, and the observed means
    table = pd.DataFrame([{"arm": arm, "week": w, "mean": m} for (arm, w), m in observed.items()])
    png = plots.fitted_trajectory_plot(answer, table, run.outcome)
    lines = {line.get_label(): line for line in drawn[-1].axes[0].get_lines()}
    base = (observed[("placebo", 0)] + observed[("nac", 0)]) / 2
    control = truth.posterior["placebo_change"].mean(("chain", "draw")).values
    effect = truth.posterior["nac_effect"].mean(("chain", "draw")).values
    for arm, fitted in (("placebo", base + control), ("nac", base + control + effect)):
        assert lines[f"{arm}: fitted mean"].get_xdata().tolist() == weeks
        np.testing.assert_allclose(lines[f"{arm}: fitted mean"].get_ydata(), fitted, rtol=1e-12)
        assert lines[f"{arm}: observed mean"].get_xdata().tolist() == weeks
        np.testing.assert_allclose(lines[f"{arm}: observed mean"].get_ydata(), [observed[(arm, w)] for w in weeks], rtol=1e-12)
    assert png == (folder / "summary" / "truth_trajectory.png").read_bytes()
    # the posterior predictive check of the mean trajectory: observed means, and the replicated ones (dashed)
    png = plots.trajectory_plot(run.models["truth"].ppc.trajectory)
    ax = drawn[-1].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    replicated = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    rep = truth.posterior_predictive["y"].values.reshape(-1, truth.observed_data["y"].size)
    c = truth.constant_data
    treated = arm_of(truth)[c["obs_participant"].values.astype(int)]
    for t, arm in ((0, "placebo"), (1, "nac")):
        np.testing.assert_allclose(lines[f"{arm}: observed"].get_ydata(), [observed[(arm, w)] for w in weeks], rtol=1e-12)
        means = [rep[:, (treated == t) & (c["obs_week"].values == w)].mean() for w in weeks]
        np.testing.assert_allclose(replicated[t].get_ydata(), means, rtol=1e-9)
    assert png == run.models["truth"].figures["trajectory"] == (folder / "truth" / "figures" / "trajectory.png").read_bytes()


def _png_problems(png: bytes) -> list[str]:
    """Why a PNG is not a drawn figure: too small to read, or blank (almost every pixel the background colour)."""
    import io

    import matplotlib.image

    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    height, width = image.shape[:2]
    problems = [] if height >= 150 and width >= 250 else [f"{width} x {height} pixels"]
    rgb = np.round(image[..., :3].reshape(-1, 3) * 255).astype(np.uint32)
    _, counts = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2], return_counts=True)
    if counts.max() > 0.995 * counts.sum() or len(counts) < 8:
        problems.append(f"blank: {len(counts)} colours, {counts.max() / counts.sum():.1%} background")
    return problems


@pytest.mark.unit
def test_every_figure_of_the_report_is_a_drawn_image(rendered):
    import base64

    import matplotlib.pyplot as plt

    from diagnostics.plots import to_png

    text = rendered[3]
    pngs = [base64.b64decode(b) for b in re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', text)]
    assert len(pngs) >= 10
    for i, png in enumerate(pngs):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and _png_problems(png) == [], i
    fig = plt.figure(figsize=(6.5, 4))
    fig.add_subplot().set_axis_off()  # a figure with nothing drawn: the check tells it apart
    assert any(p.startswith("blank") for p in _png_problems(to_png(fig)))


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


CHECKER = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e.type)); }, true);
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var d = document.createElement('div'); d.id = 'render-check';
  d.textContent = 'images ' + ok + '/' + imgs.length + ' errors ' + window.__errors.length;
  document.body.appendChild(d);
  var first = imgs[0], comp = document.getElementById('comparison'), e = document.createElement('div');
  var box = first.getBoundingClientRect();
  var before = comp && (first.compareDocumentPosition(comp) & Node.DOCUMENT_POSITION_FOLLOWING) ? 'yes' : 'no';
  e.id = 'first-image';
  e.textContent = 'first image ' + first.alt + ' bottom ' + Math.round(box.bottom) + ' of ' + window.innerHeight + ' before comparison ' + before;
  document.body.appendChild(e);
});
</script>"""


@pytest.mark.smoke  # starts a browser process
def test_report_renders_in_headless_chromium(rendered, tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it when run as root)")
    _, _, path, text = rendered
    probe = tmp_path / "probe.html"  # the shipped report has no script: a copy gets the checker
    probe.write_text(text.replace("<head>", "<head>" + CHECKER, 1), encoding="utf-8")
    profile = tmp_path / "profile"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--window-size=1280,1000", "--dump-dom", probe.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    n = text.count("<img ")
    assert f'<div id="render-check">images {n}/{n} errors 0</div>' in res.stdout, res.stdout[-500:]
    assert "Model comparison (leave-one-out)" in res.stdout and "Posterior predictive checks" in res.stdout
    # the answer first: on the first screen (1280 x 1000) the first image, the treatment-effect forest plot, lies
    # entirely, and it comes before the comparison section
    first = re.search(r'<div id="first-image">first image (.+?) bottom (-?\d+) of (\d+) before comparison (\w+)</div>', res.stdout)
    assert first, res.stdout[-500:]
    alt, bottom, height, before = first.group(1), int(first.group(2)), int(first.group(3)), first.group(4)
    assert alt == "truth: effects" and 0 < bottom <= height and before == "yes", first.group(0)
    shot = tmp_path / "shot.png"  # and the unmodified report paints
    res = subprocess.run([*cmd[:-3], "--window-size=1280,1000", f"--screenshot={shot}", path.as_uri()], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 20_000


def saved_results(fits, folder):
    for name, idata in fits.items():
        save_idata(idata, folder / name / "idata.nc")
    ESTIMATES.to_csv(folder / "truth" / "estimates.csv", index=False)
    return folder


@pytest.mark.unit
def test_diagnose_cli_reruns_on_saved_results(fits, tmp_path, capsys):
    folder = saved_results(fits, tmp_path / "results")
    assert diagnose.main([str(folder), "--remission-cutoff", "10", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "comparison (participant level): For predicting new participants" in out and "'truth' is clearly preferred" in out
    text = (folder / "report.html").read_text()
    assert "remission (&lt;= 10)" in text
    assert pd.read_csv(folder / "truth" / "ppc_rates.csv")["statistic"].str.contains("remission").any()


@pytest.mark.unit
def test_diagnose_cli_bad_input_exits_2(fits, tmp_path, capsys):
    assert diagnose.main([str(tmp_path / "nowhere")]) == 2
    assert "no results folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert diagnose.main([str(tmp_path / "empty")]) == 2
    assert "no fitted model" in capsys.readouterr().err
    folder = saved_results(fits, tmp_path / "results")
    assert diagnose.main([str(folder), "--kfold", "2"]) == 2  # refits need the original dataset
    assert "cannot refit" in capsys.readouterr().err
    assert diagnose.main([str(folder), "--kfold", "1"]) == 2


@pytest.mark.unit
def test_forest_plots_draw_a_mean_outside_its_interval():
    """The mean of a skewed posterior (a ratio, e.g. the mediation model's) can lie outside its 94% HDI: drawn, not refused."""
    from diagnostics import plots
    from diagnostics.summary import Answer

    markers = pd.DataFrame({"quantity": ["NAC / placebo ratio of IL-6 at week 12", "IL-6 per doubling"], "marker": ["il6", "il6"],
                            "unit": ["ratio", "MADRS points per doubling (pg/mL)"], "mean": [1.31, -0.4], "lo": [0.8, -1.1], "hi": [1.25, 0.2]})
    diff = pd.DataFrame({"quantity": ["nac_effect[12]"], "week": [12], "mean": [-2.5], "lo": [-2.4], "hi": [1.0], "p_benefit": [0.9], "p_mcid": [0.2]})
    answer = Answer("mediation", "", diff, 2.0, None, markers, {})
    for png in (plots.marker_forest_plot(answer), plots.effects_forest_plot(answer, ("placebo", "nac"))):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.unit
def test_sensitivity_section_per_model_and_notes_for_what_a_model_does_not_support(rendered):
    """With the sensitivity analyses: per model, the strategies at the end of treatment, the tipping point and its
    figure, response and remission, the prior flag; a note where the model has no such table; a section of its own
    for a model outside the checks (e.g. a biomarker model)."""
    import dataclasses

    import matplotlib.pyplot as plt

    from diagnostics.plots import to_png
    from diagnostics.report import render_report
    from diagnostics.sensitivity_analyses import ModelSensitivity

    run = rendered[0]
    strategies = pd.DataFrame({"strategy": ["MAR", "J2R", "MAR"], "week": [8, 8, 4], "mean": [-1.5, -0.9, -1.0], "sd": [0.5, 0.5, 0.5],
                               "hdi_3%": [-2.4, -1.8, -1.9], "hdi_97%": [-0.6, -0.1, -0.2], "p_below_0": [0.998, 0.96, 0.97],
                               "delta": [0.0, 0.0, 0.0], "dropout_share": [0.1, 0.1, 0.05], "estimand": ["all randomised (n = 100); week 8"] * 3})
    rows = []
    for estimand in ("MAR", "NRI"):
        for q, arm, mean in (("rate_placebo", "placebo", 0.30), ("rate_nac", "nac", 0.45), ("risk_difference", "nac - placebo", 0.15),
                             ("odds_ratio", "nac vs placebo", 1.9), ("nnt", "nac vs placebo", np.nan)):
            rows.append({"estimand": estimand, "outcome": "response", "week": 8, "quantity": q, "arm": arm, "mean": mean, "median": 6.7 if q == "nnt" else mean,
                         "hdi_3%": mean - 0.1, "hdi_97%": mean + 0.1, "p_above_0": 0.98 if q == "risk_difference" else np.nan})
    prior = pd.DataFrame({"effect": ["nac_effect at week 8"], "prior_sensitivity": [0.08], "prior_sensitive": [True], "diagnosis": ["prior-data conflict"]})
    fig = plt.figure()
    png = to_png(fig)
    truth = ModelSensitivity("truth", 8, {"sensitivity": strategies, "tipping_point": pd.DataFrame({"delta": [0.0]}),
                                          "responders": pd.DataFrame(rows), "prior_sensitivity": prior},
                             tipping_message="the conclusion flips at delta = 4 points on the grid", tipping_figure=png)
    wide = ModelSensitivity("wide", 8, {"prior_sensitivity": prior.assign(prior_sensitivity=0.01, prior_sensitive=False)},
                            notes={"sensitivity": "not for 'wide': it has no arm effect", "tipping_point": "not for 'wide'",
                                   "responders": "model 'wide' has no visit scores"})
    marker = ModelSensitivity("biomarker_change", 8, {"prior_sensitivity": prior.iloc[0:0]}, notes={"sensitivity": "not for 'biomarker_change'"})
    text = render_report(dataclasses.replace(run, sensitivity={"truth": truth, "wide": wide, "biomarker_change": marker}))
    truth_part = text[text.index('id="model-truth"'):text.index('id="model-wide"')]
    assert truth_part.index('id="sensitivity-truth">Sensitivity and estimands') < truth_part.index("Convergence")
    assert "<td>MAR</td><td>-1.50</td><td>-2.40 to -0.60</td><td>1.00</td><td>10.0%</td>" in truth_part  # week 8 only
    assert "<td>-1.00</td>" not in truth_part and "Estimand: all randomised (n = 100); week 8" in truth_part
    assert "<b>Tipping point</b>: the conclusion flips at delta = 4 points on the grid." in truth_part
    assert truth_part.count('<img alt="truth: tipping point" src="data:image/png;base64,') == 1
    assert "<td>hypothetical (MAR imputation)</td><td>response</td><td>30.0% (20.0% to 40.0%)</td><td>45.0% (35.0% to 55.0%)</td>" in truth_part
    assert "<td>15.0 points (5.0 to 25.0)</td><td>0.98</td><td>6.7</td>" in truth_part and "composite (missing = failure)" in truth_part
    assert "<b>Prior-sensitive</b>" in truth_part and "nac_effect at week 8 (prior-data conflict, prior sensitivity 0.080)" in truth_part
    wide_part = text[text.index('id="model-wide"'):]
    assert "No reference-based strategies, delta adjustment or tipping point for this model: not for &#x27;wide&#x27;: it has no arm effect" in wide_part
    assert "No responder or remission estimands for this model: model &#x27;wide&#x27; has no visit scores" in wide_part
    assert "No reported effect is prior-sensitive" in wide_part
    assert '<h2 id="sensitivity-biomarker_change">Model: biomarker_change: sensitivity and estimands</h2>' in text
    assert "Sensitivity and estimands" not in render_report(run)  # without the analyses: no section
