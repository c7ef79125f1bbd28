"""Prior overrides: merged into the defaults as documented."""

from __future__ import annotations

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
