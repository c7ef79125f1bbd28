"""The house: layers depend one way, no import cycles (imports inside functions count), models/ declares
only (no numba, no nutpie), the module maps (README: every package; docs/architecture.md: every module) match the tree, and the README's Python example runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("maths", "data", "models", "inference", "diagnostics", "planning", "validation", "deptrial")
SCRIPTS = ("fit", "diagnose", "plan")
# what each layer may import from the project (everything else is an upward or sideways import)
ALLOWED = {
    "maths": set(),
    "data": {"maths"},
    "models": {"maths", "data"},
    "inference": {"maths", "data", "models"},
    "diagnostics": {"maths", "data", "models", "inference"},
    "planning": {"maths", "data", "models"},
    "validation": {"maths", "data", "models", "inference", "diagnostics"},
    "deptrial": {"maths", "data", "models", "inference", "diagnostics", "planning"},
    **{s: {"maths", "data", "models", "inference", "diagnostics", "planning", "deptrial"} for s in SCRIPTS},
}


def project_modules() -> dict[str, Path]:
    mods = {s: ROOT / f"{s}.py" for s in SCRIPTS}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).glob("*.py")):
            mods[pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"] = path
    return mods


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in the file (module level or inside functions)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not (path.stem == "__init__" and target.startswith(name + ".")):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


@pytest.mark.unit
def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.unit
def test_function_level_imports_are_seen(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from .other import g\n    import models.trajectory\n")
    mods = {"pkg.m": path, "pkg.other": path, "models.trajectory": path}
    assert imports_of("pkg.m", path, mods) == {"pkg.other", "models.trajectory"}


@pytest.mark.unit
def test_no_import_cycle_between_project_modules():
    assert cycles(import_graph()) == []


@pytest.mark.unit
def test_layers_depend_one_way():
    wrong = []
    for name, targets in import_graph().items():
        layer = name.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other != layer and other not in ALLOWED[layer]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


@pytest.mark.unit
def test_models_declare_only():
    """models/ imports neither the compilers nor the sampler: those are inference/'s business."""
    offenders = []
    for path in sorted((ROOT / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("numba", "nutpie")]
    assert not offenders, offenders


def doc_block(path: str, title: str | None, lang: str) -> str:
    """The first ```lang block of a markdown file (under the section `## title` when given)."""
    text = (ROOT / path).read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0] if title else text
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def readme_block(title: str, lang: str) -> str:
    return doc_block("README.md", title, lang)


def _tree_dirs() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}


@pytest.mark.unit
def test_readme_module_map_names_every_package():
    """The README's module map: every package, one line each, and nothing that does not exist."""
    block = readme_block("Module map", "text")
    listed_dirs = set(re.findall(r"^(\w+)/", block, re.M))
    assert _tree_dirs() <= listed_dirs, f"packages missing from the README's module map: {_tree_dirs() - listed_dirs}"
    for extra in listed_dirs - _tree_dirs():
        assert (ROOT / extra).is_dir(), f"the README's module map lists {extra}/, which does not exist"
    scripts = set(re.findall(r"\b(\w+\.py)\b", block))
    assert scripts == {f"{s}.py" for s in SCRIPTS}, scripts


@pytest.mark.unit
def test_architecture_module_map_matches_the_tree():
    """docs/architecture.md's module map names every package and every module, and nothing else."""
    block = doc_block("docs/architecture.md", None, "text")
    listed_dirs = set(re.findall(r"^(\w+)/", block, re.M))
    assert _tree_dirs() <= listed_dirs, f"packages missing from the module map: {_tree_dirs() - listed_dirs}"
    for extra in listed_dirs - _tree_dirs():
        assert (ROOT / extra).is_dir(), f"the module map lists {extra}/, which does not exist"
    named = set(re.findall(r"\b(\w+\.py)\b", block))
    files = {f"{s}.py" for s in SCRIPTS} | {p.name for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py") if p.name != "__init__.py"}
    assert files <= named, f"modules missing from the module map: {sorted(files - named)}"
    assert named <= files, f"the module map names modules that do not exist: {sorted(named - files)}"


def _run_readme_example(tmp_path, code: str) -> None:
    """Run the example and check what it prints: the estimates table, row by row against the estimates.csv
    files it writes, the comparison and the report's path."""
    import os
    import subprocess
    import sys

    import numpy as np
    import pandas as pd

    (tmp_path / "example.py").write_text(code)
    # in a terminal 250 characters wide (pandas reads COLUMNS), so that every column of the estimates is printed
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    folder = tmp_path / "results" / "example"
    assert (folder / "report.html").is_file() and out.rstrip().endswith("results/example/report.html"), out[-500:]
    lines = out.splitlines()
    assert lines[0].split() == ["model", "quantity", "mean", "hdi_3%", "hdi_97%", "p_below_0"], out[:500]
    row = re.compile(r"^(\d+)\s+(treatment|headline)\s+(.+?)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$")
    printed = [m.groups() for m in map(row.match, (line.strip() for line in lines[1:])) if m]
    written = pd.concat([pd.read_csv(folder / name / "estimates.csv").assign(model=name) for name in ("treatment", "headline")],
                        ignore_index=True).to_dict("records")
    common = ["nac - placebo mean MADRS at week 12", "nac - placebo mean MADRS at week 16", "placebo change from baseline at week 12"]
    markers = ("il6", "crp", "bdnf")
    expected = [("treatment", q) for q in common] + [("headline", q) for q in common] + [
        ("headline", f"change in MADRS by week 12 per doubling of baseline {m}") for m in markers] + [
        ("headline", f"baseline MADRS per doubling of {m}") for m in markers]
    assert [(w["model"], w["quantity"]) for w in written] == expected
    assert len(printed) == len(written), out
    for i, ((index, model, quantity, *numbers), w) in enumerate(zip(printed, written)):
        assert (int(index), model) == (i, w["model"]), (i, index, model)
        # pandas shortens a quantity longer than 50 characters to its first 47 and '...'
        assert quantity == w["quantity"] or (quantity.endswith("...") and w["quantity"].startswith(quantity[:-3])), (quantity, w["quantity"])
        mean, lo, hi, p = values = [float(x) for x in numbers]
        assert np.isfinite(values).all() and lo < mean < hi and 0.0 <= p <= 1.0, (quantity, values)
        for value, column in zip(values, ("mean", "hdi_3%", "hdi_97%", "p_below_0")):
            assert value == pytest.approx(w[column], abs=1e-6), (model, quantity, column)  # printed to 6 decimals
    comparison = [line.split() for line in lines[len(printed) + 1:] if line.split()[:1] in (["headline"], ["treatment"])]
    assert sorted(c[0] for c in comparison) == ["headline", "treatment"] and "elpd" in out, out


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    """The README's Python example, exactly as printed, saved as a script and run in a fresh folder
    (as a user would: no `if __name__ == "__main__":` guard, the fits in worker processes)."""
    _run_readme_example(tmp_path, readme_block("Python", "python"))


@pytest.mark.slow
def test_readme_python_example_runs_with_fewer_draws(tmp_path):
    """The same example with its draws cut to 50 and its two fits in turn in one process (every line
    else as printed), beside the run as printed (fits side by side). The default tier's end-to-end runs of
    the same function are tests/test_api.py's."""
    code = readme_block("Python", "python")
    assert "draws=1000" in code and 'out="results/example")' in code
    code = code.replace("draws=1000", "draws=50, tune=100").replace('out="results/example")', 'out="results/example", jobs=1)')
    _run_readme_example(tmp_path, code)


@pytest.mark.unit
def test_every_fit_by_nutpie_takes_the_one_mass_matrix_adaptation():
    """fit.py's fits and the SBC and coverage refits sample with the same adaptation: every nutpie.sample call in
    inference/ and validation/ passes **nutpie_adaptation(...) (planning's MCMC check of its closed forms is its own)."""
    from inference.sampling import nutpie_adaptation

    assert nutpie_adaptation() == nutpie_adaptation("low_rank") == {"low_rank_modified_mass_matrix": True}
    assert nutpie_adaptation("diag") == {"low_rank_modified_mass_matrix": False}
    with pytest.raises(ValueError, match="unknown mass matrix 'dense'"):
        nutpie_adaptation("dense")
    calls, without = 0, []
    for pkg in ("inference", "validation"):
        for path in sorted((ROOT / pkg).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sample" \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "nutpie":
                    calls += 1
                    spread = [k.value for k in node.keywords if k.arg is None]
                    if not any(isinstance(v, ast.Call) and getattr(v.func, "id", "") == "nutpie_adaptation" for v in spread):
                        without.append(f"{path.name}:{node.lineno}")
    assert calls >= 3 and not without, (calls, without)
