"""Every notebook executes end to end (tiny settings via SPO_QUICK=1) with a real kernel, via nbclient."""
import importlib.util
import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# Notebooks that need an optional part of the package: skipped (not failed) where it is missing.
REQUIRES = {"04_transformer": "spo_tabular.transformer"}
SLOW = {"01_theorem1", "03_finite_data", "04_transformer"}     # over ~10 s on the shared 2-core machine


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _param(path):
    marks = [pytest.mark.slow] if path.stem in SLOW else []
    if path.stem in REQUIRES and not _installed(REQUIRES[path.stem]):
        marks.append(pytest.mark.skip(reason=f"needs {REQUIRES[path.stem]}, not installed"))
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("SPO_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "outputs must be stripped in git"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


def test_notebooks_are_generated_from_make_notebooks():
    """The committed notebooks are exactly what make_notebooks.py writes (edit the script, not the .ipynb)."""
    import sys
    sys.path.insert(0, str(NOTEBOOKS[0].parent))
    try:
        import make_notebooks
    finally:
        sys.path.pop(0)
    assert sorted(make_notebooks.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        expected = make_notebooks.build(path.name, make_notebooks.NOTEBOOKS[path.name])
        got = nbformat.read(path, as_version=4)
        assert [c.source for c in got.cells] == [c.source for c in expected.cells], path.name
