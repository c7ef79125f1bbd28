"""Trial designs for the validation checks, made with the project's own generator and loader."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from data import TrialParameters, load_dataset, simulate_trial
from models.contract import VISIT_CHANGES, VISIT_SCORES, BuiltModel
from models.design import TrialDesign, build_design

SBC_PARTICIPANTS = 60  # SBC is valid at any trial size; small trials keep each fit to seconds
SBC_DESIGN_SEED = 11


def design_of(params: TrialParameters) -> tuple[TrialDesign, dict]:
    """Simulate a trial, write it through the documented format, load and validate it, build its design."""
    trial = simulate_trial(params)
    with tempfile.TemporaryDirectory() as tmp:
        folder = trial.write(Path(tmp) / "trial")
        design = build_design(load_dataset(folder))
    return design, trial.truth


def sbc_design(n_participants: int = SBC_PARTICIPANTS, seed: int = SBC_DESIGN_SEED) -> TrialDesign:
    """A small design (visits, dropout, biomarker sub-study pattern) with no values below a detection limit.

    Only the pattern matters for SBC: every outcome and marker value is replaced by prior predictive draws.
    No detection limit means no censoring Potential, so the prior predictive is the model's whole generative model.
    """
    design, _ = design_of(TrialParameters(n_participants=n_participants, seed=seed, detection_limits=()))
    if design.baseline is not None and design.baseline.n_censored:
        raise AssertionError("SBC design must have no censored biomarker values")
    return design


MARKER_DRAWS = ("marker_mean", "marker_sd", "marker_regression", "marker_missing_std")  # prior draws of the marker block


def latent_markers(template: TrialDesign) -> TrialDesign:
    """`template` with every baseline biomarker value latent (missing): the design SBC simulates from.

    A model of the baseline markers scores its observed values as data and uses the same data in the outcome's
    mean, so its prior predictive draws new marker values but scores computed from the template's. With every
    value latent, the prior predictive draws the markers and the scores from them together (the model's joint
    generative model); `simulated_arrays` then keeps the values at the template's observed entries."""
    md = template.baseline
    if md is None:
        return template
    latent = replace(md, z=np.full_like(md.z, np.nan), missing=np.ones_like(md.missing), censored=np.zeros_like(md.censored),
                     z_upper=np.full_like(md.z_upper, np.nan))
    return replace(template, baseline=latent)


def simulated_arrays(sim: BuiltModel, draw: dict[str, np.ndarray], template: TrialDesign) -> dict[str, np.ndarray]:
    """The arrays of the template design that one prior predictive draw of `sim` replaces, as `with_data` takes them:
    {'y': every observed visit score, 'z': the standardised baseline markers (participant x marker)}.

    sim: the model built from the template (or from latent_markers(template) for a model with baseline markers); draw:
    its observed variables' simulated values and, with baseline markers, the prior draws of MARKER_DRAWS. 'y' (a model
    of the visit scores) is the scores themselves; 'change' (the MMRM: change from baseline at each attended
    post-baseline visit, in its pattern-sorted order, models/mmrm.mmrm_data) becomes the scores baseline + change, the
    week-0 scores kept; the markers z = mu + L eta of the sequential regressions (maths.gaussian.sequential_moments,
    eta the standardised innovations of every entry) are kept at the template's observed entries, the others missing.
    """
    design = sim.design
    with_markers = "marker_mean" in sim.model.named_vars
    if with_markers and not design.baseline.missing.all():
        raise ValueError(f"model '{sim.name}' scores its observed baseline markers as data, so its prior predictive pairs new "
                         "markers with scores drawn from the template's: simulate it from latent_markers(template)")
    rest = {k: np.asarray(draw[k], dtype=float) for k in (v.name for v in sim.model.observed_RVs)}
    out = {}
    if sim.observations == VISIT_SCORES and "y" in rest:
        out["y"] = rest.pop("y").copy()
    elif sim.observations == VISIT_CHANGES and "change" in rest:
        from models.mmrm import mmrm_data

        d = mmrm_data(design)
        where = {(int(p), int(w)): i for i, (p, w) in enumerate(zip(design.obs_participant, design.obs_week))}
        idx = np.array([where[(int(d.rows[r]), int(d.visits[v]))] for r, v in zip(d.obs_row, d.obs_visit)])
        y = np.asarray(design.y, dtype=float).copy()
        y[idx] = d.baseline[d.obs_row] + rest.pop("change")
        out["y"] = y
    if rest:
        raise ValueError(f"cannot put the simulated {sorted(rest)} of model '{sim.name}' into a trial design")
    if with_markers:
        from maths.gaussian import sequential_moments

        md = template.baseline
        n, m = md.z.shape
        mu, factor = sequential_moments(draw["marker_mean"], draw["marker_sd"], draw.get("marker_regression"), m, factor=True)
        z = mu[None, :] + np.asarray(draw["marker_missing_std"], dtype=float).reshape(n, m) @ factor.T
        out["z"] = np.where(~md.missing & ~md.censored, z, np.nan)
    return out


def with_data(template: TrialDesign, y: np.ndarray | None = None, z: np.ndarray | None = None) -> TrialDesign:
    """`template` with its visit scores y and baseline markers z replaced (the same visits, arms, sites and
    missing-value pattern: what a model reads from a design, nothing else). The validated dataset is dropped
    (dataset None: the arrays no longer come from it); the checksum stays the template's."""
    design = replace(template, dataset=None)
    if y is not None:
        if np.shape(y) != np.shape(template.y):
            raise ValueError(f"{np.size(y)} visit scores for a design with {np.size(template.y)}")
        design = replace(design, y=np.asarray(y, dtype=float))
    if z is not None:
        if template.baseline is None or np.shape(z) != template.baseline.z.shape:
            raise ValueError("baseline markers given for a design without them, or of another shape")
        design = replace(design, baseline=replace(template.baseline, z=np.asarray(z, dtype=float)))
    return design
