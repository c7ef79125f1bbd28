"""Prior overrides: merged into the defaults as documented."""

from __future__ import annotations

import re

import pytest

from models.priors import Prior, resolve, scaled_defaults


@pytest.mark.unit
def test_override_same_family_keeps_other_parameters():
    out = resolve(scaled_defaults(0, 60), {"intercept": {"params": {"sigma": 5.0}}})
    assert out["intercept"] == Prior("Normal", {"mu": 30.0, "sigma": 5.0}, "user override")


@pytest.mark.unit
def test_override_other_family_drops_the_default_parameters():
    out = resolve(scaled_defaults(0, 60), {"residual_sd": {"dist": "Exponential", "params": {"lam": 0.3}}})
    assert out["residual_sd"].dist == "Exponential" and out["residual_sd"].params == {"lam": 0.3}


@pytest.mark.unit
def test_unknown_prior_named():
    with pytest.raises(KeyError, match="unknown prior 'slope'"):
        resolve(scaled_defaults(0, 60), {"slope": {"params": {}}})


@pytest.mark.unit
@pytest.mark.parametrize("low, high", [(0, 60), (0, 52), (0, 63), (1, 7)])
def test_prior_reasons_state_rules_with_figures_of_the_data_at_hand(low, high):
    """No reason states a fact of one scale or one trial (a site count, MADRS points); the figures follow the range."""
    from models import get
    from models.priors import points

    defaults = scaled_defaults(low, high)
    r = high - low
    assert points(0.1, r) in defaults["nac_change"].reason and points(0.05, r) in defaults["site"].reason
    for name in ("mmrm", "mediation"):
        from types import SimpleNamespace

        reasons = [p.reason for p in get(name).default_priors(SimpleNamespace(score_range=float(r), covariate_names=[])).values()]
        assert any(points(0.1, r) in text for text in reasons)
    for prior in defaults.values():
        assert "MADRS" not in prior.reason and not re.search(r"\b\d+ sites\b", prior.reason), prior.reason
