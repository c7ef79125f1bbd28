"""The retrieved-dropout MMRM and its treatment-policy estimate (docs/diagnostics.md, "Retrieved dropouts").

Where participants who stopped the randomised treatment early keep attending visits (retrieved dropouts), their
visits say what happens after discontinuation. This model is the Bayesian MMRM (models/mmrm.py) with one more term in
the mean of participant i's change at post-baseline visit v:

    mu_iv = (the MMRM's mean) + theta[arm(i), v] * off_iv

- off_iv = 1 at the visits after participant i stopped the randomised treatment before its planned end (the
  `off_treatment` column of visits.csv, data/schema.py; 1 from the first such visit on), 0 otherwise;
- theta ('off_treatment_effect', dims arm x visit, every arm including the control arm): the shift of the mean change
  of an off-treatment visit relative to an on-treatment one, per arm and visit: the off-treatment indicator x visit x
  arm term of the retrieved-dropout models (the MMRM2 of Bell et al. 2025, as rbmi's retrieved-dropout vignette
  specifies it); weakly informative Normal(0, 10% of the score range), as the treatment difference.
The MMRM's own parameters keep their meaning for on-treatment visits: 'nac_effect' is the arm difference had every
participant stayed on the randomised treatment (a hypothetical estimand), 'placebo_change' the control arm's on-treatment
change. The off-treatment indicator enters as a time-varying covariate: a participant's density is the product of the
sequential conditional normals, each given the flags up to that visit, so the likelihood stays valid when stopping
depends on the earlier observed scores.

The treatment-policy estimand (ICH E9(R1)): every randomised participant's change at visit v, whatever happened to the
treatment; the missing visits after discontinuation are imputed from the off-treatment model (missing at random given the
arm, the observed history and the off-treatment status), the other missing visits from the on-treatment model (missing at
random). Per posterior draw, the conditional mean of a missing value given the participant's observed values is
m_iv = mu_iv + Sigma_vO Sigma_OO^-1 (y_O - mu_O), mu including theta wherever the participant is off treatment; its
regression part has mean zero under the model, so the arm's mean over all its randomised participants, observed and
imputed alike, has the expectation

    E[mean change of arm a at v] = (on-treatment mean of arm a at v) + pi_av theta[a, v]

with pi_av the share of arm a off treatment at v (attended or not). This expectation, evaluated per draw, is the
estimate: the treatment-policy effect of active arm a against the control arm c is

    TP_av = d_av + pi_av theta[a, v] - pi_cv theta[c, v]          (d_av = nac_visit_effect)

It depends on the parameters and the observed shares only (as the reference-based strategies of
diagnostics/sensitivity.py depend on d and Sigma only), so the posterior of d and theta carries the sampling
variability of the on- and off-treatment data alike; a completed-data mean with the observed scores held fixed would
not (its interval would be too narrow). The shares are the trial's own (the estimate is conditional on its discontinuation
pattern). With nobody off treatment TP = d exactly: the MAR estimate.

Who is off treatment at a visit (`off_status`): from the participant's first visit flagged off_treatment = 1 on (a missed
visit's row may carry the flag: a participant who stopped and left the trial), and, with an intercurrent-event table
(data/ice.py; the sensitivity analyses), from the listed week on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from data.ice import IceTable

from . import mmrm
from .contract import BuiltModel
from .design import ModelDataError, TrialDesign
from .effects import effect_row, flat_draws, with_estimands
from .mmrm import OFF_EFFECT
from .priors import Prior, points, resolve

NAME = "mmrm_retrieved"
DESCRIPTION = ("Bayesian MMRM with retrieved dropouts: on- and off-treatment visits modelled apart (off-treatment x arm x visit); "
               "the treatment-policy effect, missing post-discontinuation visits imputed from the off-treatment model; needs "
               "visits.csv's off_treatment column")
LIKELIHOODS = mmrm.LIKELIHOODS
POLICY_KIND = "difference_treatment_policy"  # models.effects.ESTIMAND_KINDS: the rows of `extra_estimates`


def off_prior(design: TrialDesign) -> Prior:
    r = design.score_range
    return Prior("Normal", {"mu": 0.0, "sigma": 0.1 * r},
                 f"shift of an off-treatment visit's mean change from an on-treatment one, per arm and visit: SD {points(0.1, r)}, "
                 "as the treatment difference (losing a treatment's benefit moves the mean by about its effect)")


def default_priors(design: TrialDesign) -> dict[str, Prior]:
    return {**mmrm.default_priors(design), OFF_EFFECT: off_prior(design)}


def retrieved_visits(design: TrialDesign, d: mmrm.MMRMData | None = None) -> np.ndarray:
    """arm x post-baseline visit: the attended visits after stopping treatment early (those that inform theta)."""
    d = d if d is not None else mmrm.mmrm_data(design)
    out = np.zeros((len(design.arms), len(d.visits)), dtype=int)
    if d.obs_off is not None:
        np.add.at(out, (design.arm_idx[d.rows][d.obs_row], d.obs_visit), (d.obs_off > 0).astype(int))
    return out


def check_data(design: TrialDesign) -> mmrm.MMRMData:
    """The MMRM's data, refused (ModelDataError) without off_treatment flags or without an attended off-treatment visit."""
    d = mmrm.mmrm_data(design)
    if design.off_treatment is None:
        raise ModelDataError(
            f"model '{NAME}' needs to know which visits came after a participant stopped the randomised treatment early: "
            "add the column off_treatment to visits.csv (1 from the first visit after stopping, 0 before; docs/data.md), or "
            "read ADaM data with ONTRTFL or TRTEDT (docs/adam.md); without it use --model mmrm")
    if not retrieved_visits(design, d).any():
        stopped = int(design.off_treatment.any(axis=1).sum())
        raise ModelDataError(
            f"model '{NAME}' estimates the off-treatment course from visits attended after stopping treatment, and this trial "
            f"has none ({stopped} participant(s) stopped treatment early, none attended a visit afterwards): the off-treatment "
            "effect would be its prior alone. Use --model mmrm with --sensitivity (reference-based imputation, J2R/CR/CIR) "
            "for discontinuations without retrieved data, or check the off_treatment column of visits.csv")
    return d


def build_mmrm_retrieved(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal",
                         covariates: bool | list[str] | None = True) -> BuiltModel:
    """The MMRM with the off-treatment term (module docstring); priors as for the MMRM, plus OFF_EFFECT."""
    d = check_data(design)
    rest = dict(priors or {})
    off = resolve({OFF_EFFECT: off_prior(design)}, {OFF_EFFECT: rest.pop(OFF_EFFECT)} if OFF_EFFECT in rest else None)[OFF_EFFECT]
    built = mmrm.build_mmrm(design, rest, likelihood, covariates, off_treatment=off)
    counts = retrieved_visits(design, d)
    shown = "; ".join(f"{arm}: " + ", ".join(f"week {int(w)} {int(k)}" for w, k in zip(d.visits, counts[a]) if k)
                      for a, arm in enumerate(design.arms) if counts[a].any())
    notes = {"retrieved_visits": {arm: {str(int(w)): int(k) for w, k in zip(d.visits, counts[a])} for a, arm in enumerate(design.arms)},
             "text": f"{int(counts.sum())} visit(s) attended after stopping treatment early ({shown})"}
    # built.fused_kernel is the MMRM's (inference/kernels_mmrm.py), which computes the off-treatment term too
    return replace(built, name=NAME, priors={**built.priors, OFF_EFFECT: off}, notes=notes)


# ---------------------------------------------------------------- the treatment-policy estimate


def off_status(design: TrialDesign, ice: IceTable | None = None) -> np.ndarray:
    """participant x post-baseline visit: off treatment (module docstring), for every participant of the design."""
    out = np.zeros((design.n_participants, len(design.weeks) - 1), dtype=bool)
    if design.off_treatment is not None:
        out |= np.asarray(design.off_treatment, dtype=bool)[:, 1:]
    if ice is not None and len(ice):
        where = {str(p): i for i, p in enumerate(design.participants)}
        for pid, (week, _) in ice.by_participant().items():
            out[where[pid]] |= design.weeks[1:] >= week
    return out


@dataclass
class Shares:
    """Per arm (every arm, control first) and post-baseline visit: the share of the arm's randomised participants off
    treatment there (`off`), and the share with a missing visit after stopping treatment, imputed from the off-treatment
    model (`imputed`)."""

    off: np.ndarray
    imputed: np.ndarray
    n: np.ndarray  # participants per arm


def policy_shares(design: TrialDesign, ice: IceTable | None = None) -> Shares:
    """The shares of `policy_draws` over every randomised participant (each has a baseline score: data/schema.py)."""
    off = off_status(design, ice)
    missing = np.isnan(design.wide_scores()[:, 1:])
    arms = np.asarray(design.arm_idx)
    n = np.array([(arms == a).sum() for a in range(len(design.arms))])
    share = lambda mask: np.stack([mask[arms == a].mean(axis=0) for a in range(len(design.arms))])  # noqa: E731
    return Shares(share(off), share(off & missing), n)


def policy_draws(d: np.ndarray, theta: np.ndarray, off_share: np.ndarray) -> np.ndarray:
    """TP = d_a + pi_a theta_a - pi_c theta_c (module docstring) per draw: d (draws x active arm x visits), theta (draws x arm
    x visits, control first), off_share (arm x visits) -> draws x active arm x visits."""
    shifted = theta * off_share[None]
    return d + shifted[:, 1:] - shifted[:, :1]


def posterior_policy(posterior, design: TrialDesign, ice: IceTable | None = None) -> tuple[np.ndarray, Shares]:
    """(TP per draw: flat draws x active arm x post-baseline visits, the shares) of a fit of this model."""
    if OFF_EFFECT not in posterior:
        raise ValueError(f"the fit has no '{OFF_EFFECT}': it is not a fit of '{NAME}'")
    d = flat_draws(posterior["nac_visit_effect"].transpose("chain", "draw", "active_arm", "visit"))
    theta = flat_draws(posterior[OFF_EFFECT].transpose("chain", "draw", "arm", "visit"))
    shares = policy_shares(design, ice)
    return policy_draws(d, theta, shares.off), shares


def extra_estimates(idata, design: TrialDesign, mcid=None) -> pd.DataFrame:
    """The treatment-policy effect of each active arm against the control arm at every post-baseline week (the primary
    week, the end of treatment, among them), with its estimand; `note` names a week where an arm has participants off
    treatment but no attended off-treatment visit (its off-treatment effect there is the prior's)."""
    post = idata.posterior
    meta = design.meta
    tp, shares = posterior_policy(post, design)
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    weeks = np.asarray(design.weeks[1:], dtype=int)
    retrieved = retrieved_visits(design)
    label = meta.outcome_label
    blocks = []
    for j, arm in enumerate(design.active_arms):
        rows = []
        for v, w in enumerate(weeks):
            primary = " (primary week)" if w == meta.treatment_end else ""
            row = effect_row(f"{arm} - {meta.control_arm} mean {label} change at week {w}, treatment policy{primary}",
                             tp[:, j, v].reshape(chains, draws), mcid, week=int(w), marker="", unit=f"{label} points")
            unseen = [a for a in (0, j + 1) if shares.off[a, v] > 0 and not retrieved[a, v]]
            row["note"] = ("prior only: no visit attended off treatment in " + " and ".join(design.arms[a] for a in unseen)
                           + f" at week {w}") if unseen else ""
            rows.append(row)
        blocks.append(with_estimands(pd.DataFrame(rows), meta, [POLICY_KIND] * len(rows), model=NAME, arms=[arm] * len(rows)))
    return pd.concat(blocks, ignore_index=True)
