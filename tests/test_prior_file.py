"""Prior files and presets (models/prior_file.py): the layout, precedence, the presets' figures, every
refusal with the file, table and fix named, and fit.py exiting 2 before any fit; the priors used are
the ones recorded in the fit. No sampling."""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pytest
import xarray as xr
from scipy import stats

import fit
from data import DEFAULT_DATASET, load_dataset
from deptrial import api, orchestrate, preflight
from inference.idata_io import provenance, stamp
from models import REGISTRY, build_design, get
from models.prior_file import (
    NO_TREATMENT_EFFECT_IN_POINTS,
    PRESET_Z,
    TREATMENT_EFFECT_PRIORS,
    PriorFileError,
    model_priors,
    read_prior_file,
    used_priors,
)
from models.priors import to_json

MCID = 2.0


@pytest.fixture(scope="module")
def design():
    return build_design(load_dataset(DEFAULT_DATASET))


def specs(*names):
    return [get(n) for n in names]


def write(tmp_path, text, name="priors.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


LAYOUT = """
preset = "sceptical"

[headline.nac_change]        # a model's own table wins over the preset
sigma = 3.0

[all.residual_sd]            # every fitted model that uses residual_sd
dist = "Exponential"
lam = 0.2

[treatment.residual_sd]      # ... except where a model's own table names it
sigma = 4.0
reason = "narrower noise prior"
"""


@pytest.mark.unit
def test_layout_precedence_and_preset(tmp_path, design):
    out = model_priors(specs("null", "treatment", "headline", "mmrm"), design, write(tmp_path, LAYOUT), mcid=MCID)
    sd = MCID / PRESET_Z
    # [headline.nac_change] keeps the default's family and mu, and replaces the preset for that prior
    assert out["headline"]["nac_change"] == {"dist": "Normal", "params": {"mu": 0.0, "sigma": 3.0}, "reason": "priors.toml [headline.nac_change]"}
    # the preset sets the other models' treatment effect; null has none, mmrm's is nac_visit_effect
    assert out["treatment"]["nac_change"]["params"] == {"mu": 0.0, "sigma": pytest.approx(sd)}
    assert out["mmrm"]["nac_visit_effect"]["params"] == {"mu": 0.0, "sigma": pytest.approx(sd)}
    assert "nac_change" not in out.get("null", {})
    # [all.residual_sd] reaches every model that uses the name (another family: only the parameters given) ...
    for model in ("null", "headline"):
        assert out[model]["residual_sd"] == {"dist": "Exponential", "params": {"lam": 0.2}, "reason": "priors.toml [all.residual_sd]"}
    assert "residual_sd" not in out["mmrm"]  # the MMRM has no prior of that name
    # ... and a model's own table wins over [all]
    assert out["treatment"]["residual_sd"] == {"dist": "HalfNormal", "params": {"sigma": 4.0}, "reason": "narrower noise prior"}
    # the result is what deptrial.fit_trial accepts
    preflight.check_priors(out, specs("null", "treatment", "headline", "mmrm"), design)


@pytest.mark.unit
def test_presets_put_the_stated_probabilities_on_the_mcid(design):
    sd = MCID / PRESET_Z
    prior = stats.norm(0.0, sd)
    assert prior.cdf(-MCID) + prior.sf(MCID) == pytest.approx(0.10, abs=1e-9)  # sceptical: 10% beyond the MCID, two-sided
    assert prior.cdf(-MCID) == pytest.approx(0.05, abs=1e-9)  # ... 5% on a benefit above the MCID
    sceptical = model_priors(specs("treatment", "mmrm", "mediation", "biomarker_change"), design, preset="sceptical", mcid=MCID)
    enthusiastic = model_priors(specs("treatment", "mmrm", "mediation", "biomarker_change"), design, preset="enthusiastic", mcid=MCID)
    assert set(sceptical) == set(enthusiastic) == {"treatment", "mmrm", "mediation"}  # the biomarker model's effect is not in points
    for model, name in (("treatment", "nac_change"), ("mmrm", "nac_visit_effect"), ("mediation", "direct_effect")):
        s, e = sceptical[model][name], enthusiastic[model][name]
        assert s["dist"] == e["dist"] == "Normal" and s["params"]["sigma"] == e["params"]["sigma"] == pytest.approx(sd)
        assert np.all(np.asarray(s["params"]["mu"]) == 0.0)
        assert "sceptical" in s["reason"] and "enthusiastic" in e["reason"]
    # enthusiastic: a benefit of one MCID (lower is better); the trajectory models gain it during treatment and keep it
    assert design.has_followup and enthusiastic["treatment"]["nac_change"]["params"]["mu"] == [-MCID, 0.0]
    assert enthusiastic["mmrm"]["nac_visit_effect"]["params"]["mu"] == -MCID
    end = stats.norm(-MCID, sd)
    assert end.cdf(0.0) == pytest.approx(0.95, abs=1e-9) and end.cdf(-MCID) == pytest.approx(0.5)
    # the MCID scales it
    assert model_priors(specs("treatment"), design, preset="sceptical", mcid=4.0)["treatment"]["nac_change"]["params"]["sigma"] == pytest.approx(4.0 / PRESET_Z)
    with pytest.raises(PriorFileError, match="none of the models fitted \\(null\\)"):
        model_priors(specs("null"), design, preset="sceptical", mcid=MCID)
    with pytest.raises(PriorFileError, match="MCID must be a positive number"):
        model_priors(specs("treatment"), design, preset="sceptical", mcid=0.0)


@pytest.mark.unit
def test_every_registered_model_has_a_preset_decision(design):
    assert set(TREATMENT_EFFECT_PRIORS).isdisjoint(NO_TREATMENT_EFFECT_IN_POINTS)
    assert set(TREATMENT_EFFECT_PRIORS) | set(NO_TREATMENT_EFFECT_IN_POINTS) == set(REGISTRY)
    for model, name in TREATMENT_EFFECT_PRIORS.items():
        assert name in used_priors(get(model), design), (model, name)


@pytest.mark.unit
def test_python_dict_takes_all_and_its_own_entries_win_over_the_preset(design):
    given = {"all": {"residual_sd": {"params": {"sigma": 5.0}}}, "treatment": {"nac_change": {"params": {"sigma": 1.0}}}}
    out = model_priors(specs("null", "treatment"), design, given, preset="enthusiastic", mcid=MCID)
    assert out["null"] == {"residual_sd": {"params": {"sigma": 5.0}}}
    assert out["treatment"]["nac_change"] == {"params": {"sigma": 1.0}} and out["treatment"]["residual_sd"] == {"params": {"sigma": 5.0}}
    with pytest.raises(ValueError, match="none of the models fitted uses a prior 'nac_chnage' \\(did you mean 'nac_change'"):
        model_priors(specs("treatment"), design, {"all": {"nac_chnage": {"params": {"sigma": 1.0}}}})


BAD = [
    ("[headline.nac_change\nsigma = 3", ["not valid TOML", "line 1"]),
    ("[headline.nac_change]\nsigma = 3\nmu = \n", ["not valid TOML", "line 3"]),
    ("[headlin.nac_change]\nsigma = 3", ["[headlin]", "unknown model 'headlin'", "did you mean 'headline'"]),
    ("[headline.nac_chang]\nsigma = 3", ["[headline.nac_chang]", "model 'headline' has no prior 'nac_chang'", "did you mean 'nac_change'", "its priors: "]),
    ("[null.nac_change]\nsigma = 3", ["[null.nac_change]", "model 'null' does not use a prior 'nac_change'"]),
    ("[all.nac_chnage]\nsigma = 3", ["[all.nac_chnage]", "none of the models fitted", "did you mean 'nac_change'"]),
    ("[mmrm.nac_visit_effect]\nsigma = 3", ["[mmrm.*]", "not among the models fitted"]),
    ("[headline.nac_change]\ndist = \"Normall\"\nsigma = 3", ["unknown distribution family 'Normall'", "did you mean 'Normal'"]),
    ("[headline.nac_change]\nsgima = 3", ["[headline.nac_change]", "Normal has no parameter 'sgima'", "did you mean 'sigma'", "Normal(mu, sigma)"]),
    ("[headline.nac_change]\nsigma = -1", ["[headline.nac_change]", "sigma = -1", "must be positive"]),
    ("[headline.nac_change]\nsigma = 0", ["sigma = 0", "must be positive"]),
    ("[headline.residual_sd]\ndist = \"Gamma\"\nalpha = 2", ["Gamma needs beta as well"]),
    ("[headline.residual_sd]\ndist = \"Normal\"\nmu = 0\nsigma = 1", ["'residual_sd' needs a positive family and Normal is real-valued", "choose one of HalfNormal"]),
    ("[headline.participant_corr]\neta = 0.0", ["[headline.participant_corr]", "eta = 0", "must be positive"]),
    ("[headline.nac_change]\nsigma = \"3\"", ["sigma = '3' is not a number", "unquoted"]),
    ("[headline.nac_change]\nsigma = true", ["sigma = True is not a number"]),
    ("[headline.nac_change]\nsigma = nan", ["is not a finite number"]),
    ("[headline.nac_change]\n", ["sets nothing"]),
    ("[headline]\nnac_change = 3", ["a prior is a table of its own", "[headline.nac_change]"]),
    ("[headline.nac_change.params]\nsigma = 3", ["[headline.nac_change]: params is a table", "one per line"]),
    ("preset = \"skeptical\"", ["unknown preset", "did you mean 'sceptical'"]),
    ("sigma = 3", ["top-level key 'sigma'"]),
]


@pytest.mark.unit
@pytest.mark.parametrize("text, expected", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_a_bad_file_is_refused_naming_the_file_table_and_fix(tmp_path, design, text, expected):
    path = write(tmp_path, text, "sens.toml")
    with pytest.raises(PriorFileError) as info:
        model_priors(specs("null", "treatment", "headline"), design, read_prior_file(path), mcid=MCID)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and message.startswith(str(path))
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.unit
def test_missing_file_is_refused(tmp_path):
    with pytest.raises(PriorFileError, match="no such file"):
        read_prior_file(tmp_path / "none.toml")


@pytest.mark.unit
def test_fit_exits_2_on_a_bad_prior_file_before_reading_the_data(tmp_path, capsys, monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("a bad prior file must be refused before the data are read")

    monkeypatch.setattr(api, "fit_trial", no_fit)
    path = write(tmp_path, "[headline.nac_change]\nsigma = -2\n")
    assert fit.main(["--priors", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "[headline.nac_change]" in err and "must be positive" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_fit_exits_2_on_an_unknown_prior_name_before_any_fit(tmp_path, capsys, monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("a refused request must not reach the fits")

    monkeypatch.setattr(orchestrate, "run_models", no_fit)
    path = write(tmp_path, "[treatment.nac_effect_sd]\nsigma = 2\n")
    assert fit.main(["--model", "treatment", "--priors", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "[treatment.nac_effect_sd]" in err and "model 'treatment' has no prior 'nac_effect_sd'" in err and "nac_change" in err
    assert not (tmp_path / "out").exists()


class Reached(Exception):
    pass


@pytest.mark.unit
def test_fit_passes_the_file_and_preset_to_the_fits(tmp_path, monkeypatch):
    seen = {}

    def capture(*args, priors=None, **kwargs):
        seen.update(priors)
        raise Reached

    monkeypatch.setattr(orchestrate, "run_models", capture)
    path = write(tmp_path, "preset = \"sceptical\"\n[all.residual_sd]\nsigma = 5.0\n")
    with pytest.raises(Reached):
        fit.main(["--model", "null", "treatment", "--priors", str(path), "--prior-preset", "enthusiastic", "--mcid", "3",
                  "--out", str(tmp_path / "out")])
    assert seen["treatment"]["nac_change"]["params"] == {"mu": [-3.0, 0.0], "sigma": pytest.approx(3.0 / PRESET_Z)}  # the flag wins
    assert seen["null"]["residual_sd"]["params"] == {"sigma": 5.0} and seen["treatment"]["residual_sd"]["params"] == {"sigma": 5.0}


@pytest.mark.unit
def test_the_priors_used_are_recorded_in_the_fit(tmp_path, design):
    """What finish_fit stamps (to_json(built.priors)) holds the file's and the preset's priors, and a saved
    fit's recorded priors rebuild the same model (as load_fit does)."""
    path = write(tmp_path, "[treatment.residual_sd]\ndist = \"Exponential\"\nlam = 0.25\n")
    given = model_priors(specs("treatment"), design, path, preset="enthusiastic", mcid=MCID)["treatment"]
    built = get("treatment").build(design, priors=given)
    idata = az.InferenceData(posterior=xr.Dataset({"nac_change": (("chain", "draw", "phase"), np.zeros((1, 2, 2)))}))
    stamp(idata, model="treatment", priors=to_json(built.priors))
    recorded = provenance(idata)["priors"]
    assert recorded["residual_sd"] == {"dist": "Exponential", "params": {"lam": 0.25}, "reason": "priors.toml [treatment.residual_sd]"}
    assert recorded["nac_change"]["params"] == {"mu": [-MCID, 0.0], "sigma": pytest.approx(MCID / PRESET_Z)}
    assert recorded["nac_change"]["reason"].startswith("enthusiastic preset")
    assert recorded["intercept"] == json.loads(to_json({"i": get("treatment").default_priors(design)["intercept"]}))["i"]  # untouched
    rebuilt = get("treatment").build(design, priors=json.loads(idata.posterior.attrs["priors"]))
    assert to_json(rebuilt.priors) == to_json(built.priors)
