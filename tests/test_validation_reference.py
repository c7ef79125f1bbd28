"""Reference posteriors (posteriordb style): the stored summaries are well formed, the comparison catches a
shifted mean, and (slow) a new fit of every registered model matches its reference within a few MCSE."""

from __future__ import annotations

import pytest

from models import registry
from validation.reference import (
    REFERENCE_DIR,
    TOLERANCE_MCSE,
    check_reference,
    compare_to_reference,
    declared_names,
    is_declared,
    load_reference,
    reference_path,
)

FILES = sorted(REFERENCE_DIR.glob("default-*.json"))


@pytest.mark.unit
def test_reference_files_are_complete():
    assert FILES, "no reference posteriors: run python -m validation.run --reference"
    for path in FILES:
        ref = load_reference(path)
        assert ref["model"] in registry.REGISTRY, f"{path.name}: model '{ref['model']}' is no longer registered"
        assert {"draws", "tune", "chains", "seed", "sampler"} <= set(ref["settings"])
        assert {"pymc", "nutpie", "arviz", "numpy", "python"} <= set(ref["versions"])
        assert ref["parameters"], path.name
        for name, p in ref["parameters"].items():
            assert p["sd"] > 0 and 0 < p["mcse_mean"] < p["sd"], (path.name, name)
        assert ref["divergences"] == 0, f"{path.name}: the reference fit had divergences"


@pytest.mark.unit
def test_reference_names_are_the_names_the_models_declare():
    """The slow refit compares by name: a renamed variable or a new dimension (an arm axis) must show here,
    in the default tier, from the model declarations alone."""
    from data import load_dataset
    from models.design import build_design
    from validation.reference import DEFAULT_DATA

    design = build_design(load_dataset(DEFAULT_DATA))
    for path in FILES:
        ref = load_reference(path)
        model = registry.get(ref["model"]).build(design).model
        declared = declared_names(model)
        unknown = sorted(n for n in ref["parameters"] if not is_declared(n, declared, model))
        assert not unknown, f"{path.name}: {unknown[:5]} are not declared by the model; regenerate or rename the reference"


@pytest.mark.unit
def test_comparison_catches_a_mean_shifted_by_many_mcse():
    ref = {"parameters": {"a": {"mean": 1.0, "mcse_mean": 0.01}, "b": {"mean": 0.0, "mcse_mean": 0.02}}}
    same = {"a": {"mean": 1.02, "mcse_mean": 0.01}, "b": {"mean": 0.03, "mcse_mean": 0.02}}
    assert compare_to_reference(ref, same) == []
    shifted = {"a": {"mean": 1.0 + TOLERANCE_MCSE * 0.03, "mcse_mean": 0.01}, "b": same["b"]}
    assert len(compare_to_reference(ref, shifted)) == 1
    assert "not in the new fit" in compare_to_reference(ref, {"a": same["a"]})[0]


@pytest.mark.slow
def test_every_registered_model_has_a_reference():
    """Every model the bundled trial can feed has a reference posterior on it; a model it cannot feed (mmrm_retrieved
    needs visits attended after stopping treatment) must really be refused by it (its exactness is checked against its
    PyMC graph in tests/test_retrieved_dropouts.py)."""
    from data import load_dataset
    from models import ModelDataError
    from models.design import build_design
    from validation.reference import DEFAULT_DATA

    design = build_design(load_dataset(DEFAULT_DATA))
    missing = []
    for m in registry.REGISTRY:
        if reference_path(m).exists():
            continue
        try:
            registry.get(m).require(design)
        except ModelDataError:
            continue
        missing.append(m)
    assert not missing, f"no reference posterior for {missing}: run python -m validation.run --reference {' '.join(missing)}"


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_new_fit_matches_reference(path):
    problems, _ = check_reference(path)
    assert not problems, "\n".join(problems)
