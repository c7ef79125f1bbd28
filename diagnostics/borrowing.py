"""Borrowing the control arm from past trials: the MAP prior of a fit, its checks and what the report and map_prior.json say.

`fit.py --historical-control` (deptrial.api.fit_trial's `historical_control`) fits a meta-analytic-predictive (MAP)
prior of the control arm's mean change from baseline at the end of treatment from past trials (maths/map_prior.py;
the past trials from data/historical.py), robustified with a vague component, and puts it on that parameter of every
model that has one (models.priors.CONTROL_CHANGE): `visit_mean` at the end of treatment in the MMRM, `time_change`
of the treatment phase in the trajectory models. This module builds that prior, then, after the fits, the record
written to map_prior.json and shown in the report:

- the MAP prior (its mixture, the robust mixture, ESS by ELIR and by moments, the approximation's accuracy, settings);
- the new trial's control arm observed at the end of treatment (data.historical.control_summary: observed cases,
  the summary the past trials give), and the prior-data conflict check on it: the two-sided predictive p-value
  under the MAP mixture and the vague component's weight before and after these data (MapPrior.check);
- per model, the control change at the end of treatment (`placebo_change` at that week): prior mean and SD beside
  the posterior's mean, SD and 94% HDI.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from data.historical import ControlSummary, HistoricalControls, control_summary
from maths.map_prior import ROBUST_WEIGHT, MapPrior, NormalMixture, fit_map_prior
from models.effects import HDI_PROB
from models.priors import CONTROL_CHANGE, Prior, mixture_prior

MAP_FILE = "map_prior.json"


@dataclass
class Borrowing:
    """A MAP prior for one run: the prior, the past trials and the new trial's control arm (before any fit)."""

    prior: MapPrior
    historical: HistoricalControls
    control: ControlSummary
    models: list[str]  # the models it is put on
    posteriors: dict = field(default_factory=dict)  # per model, `posterior_summary`

    @property
    def model_prior(self) -> Prior:
        mix = self.prior.robust
        w = self.prior.settings["robust_weight"]
        return mixture_prior(mix.weights, mix.means, mix.sds, (
            f"MAP prior of the control arm's mean change at the end of treatment from {len(self.historical)} past trials"
            + (f", robust (weight {w:g} on a vague Normal(mean, {self.prior.sigma:.3g}))" if w > 0 else "")
            + f": ESS {self.prior.ess['robust' if w > 0 else 'map']['elir']:.0f} participants (ELIR)"))

    def check(self) -> dict:
        return self.prior.check(self.control.mean, self.control.se)

    def record(self) -> dict:
        """What map_prior.json holds: the prior (MapPrior.to_dict), the new trial's control arm, the conflict check and
        each model's posterior of the control change."""
        return {
            **self.prior.to_dict(),
            "parameter": "the control arm's mean change from baseline at the end of treatment (week "
                         f"{self.control.week}); models: " + ", ".join(self.models),
            "new_trial": {"control_arm": self.control.arm, "week": self.control.week, "n_observed": self.control.n,
                          "mean": self.control.mean, "sd": self.control.sd, "se": self.control.se,
                          "summary": "observed cases: control participants with the baseline and that visit"},
            "conflict": self.check(),
            "models": self.posteriors,
        }


TRAJECTORY_MODELS = ("null", "treatment", "treatment_curved", "headline", "moderation")


def prepare(historical: HistoricalControls, ds, model_names, *, robust_weight: float = ROBUST_WEIGHT,
            tau_scale: float | None = None, seed: int = 1) -> Borrowing:
    """The run's MAP prior (fit_map_prior with the run's seed) and the new trial's control arm, before any fit.
    Raises ValueError when no model takes the prior or the control arm has fewer than 2 participants at the end of
    treatment."""
    takers = [n for n in model_names if n == "mmrm" or n in TRAJECTORY_MODELS]
    others = [n for n in model_names if n not in takers]
    if others:
        raise ValueError(f"--historical-control puts a prior on the control arm's change at the end of treatment, a "
                         f"parameter of the MMRM and the trajectory models ({', '.join(('mmrm',) + TRAJECTORY_MODELS)}); "
                         f"{', '.join(others)} has none: fit those models without it")
    control = control_summary(ds)
    prior = fit_map_prior(historical.study, historical.n, historical.mean, historical.sd, robust_weight=robust_weight,
                          tau_scale=tau_scale, seed=seed, source=historical.source)
    return Borrowing(prior, historical, control, list(takers))


def with_control_prior(priors: dict | None, borrowing: Borrowing) -> dict:
    """The per-model prior overrides with the MAP prior added for every model it is put on."""
    out = {k: dict(v) for k, v in (priors or {}).items()}
    for name in borrowing.models:
        out.setdefault(name, {})[CONTROL_CHANGE] = borrowing.model_prior
    return out


def posterior_summary(idata, week: int, prior: NormalMixture) -> dict:
    """The control change at `week` (`placebo_change`) of a fit: posterior mean, SD and 94% HDI beside the prior's mean
    and SD."""
    import arviz as az

    draws = idata.posterior["placebo_change"].sel(week=week).values.ravel()
    lo, hi = az.hdi(draws, hdi_prob=HDI_PROB)
    return {"prior_mean": prior.mean, "prior_sd": prior.sd, "mean": float(draws.mean()), "sd": float(draws.std()),
            f"hdi_{(1 - HDI_PROB) / 2:.0%}": float(lo), f"hdi_{1 - (1 - HDI_PROB) / 2:.0%}": float(hi)}


def figure(record: dict) -> bytes:
    """The MAP prior, the robust prior, the new trial's control data (its normal likelihood) and each model's posterior
    of the control change at the end of treatment (a normal with its mean and SD), on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mix, robust = NormalMixture.from_dict(record["mixture"]), NormalMixture.from_dict(record["robust_mixture"])
    new = record["new_trial"]
    centre, spread = mix.mean, max(mix.sd, new["se"])
    lo = min(centre - 4 * spread, new["mean"] - 4 * new["se"])
    hi = max(centre + 4 * spread, new["mean"] + 4 * new["se"])
    x = np.linspace(lo, hi, 600)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(x, mix.pdf(x), color="0.3", lw=2, label="MAP prior (mixture)")
    if record["settings"]["robust_weight"] > 0:
        ax.plot(x, robust.pdf(x), color="0.3", lw=1.5, ls="--", label=f"robust MAP prior (weight {record['settings']['robust_weight']:g} vague)")
    z = (x - new["mean"]) / new["se"]
    ax.plot(x, np.exp(-0.5 * z * z) / (new["se"] * np.sqrt(2 * np.pi)), color="tab:orange", lw=1.5,
            label=f"new control arm (observed, n = {new['n_observed']})")
    for k, (name, post) in enumerate(record.get("models", {}).items()):
        zz = (x - post["mean"]) / post["sd"]
        ax.plot(x, np.exp(-0.5 * zz * zz) / (post["sd"] * np.sqrt(2 * np.pi)), lw=1.2, color=f"C{(k + 2) % 10}",
                label=f"{name} posterior (normal approximation)")
    ax.set_xlabel(f"control arm's mean change from baseline at week {new['week']}")
    ax.set_yticks([])
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


__all__ = ["Borrowing", "MAP_FILE", "TRAJECTORY_MODELS", "figure", "posterior_summary", "prepare", "with_control_prior"]
