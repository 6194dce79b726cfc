"""The notebooks run top to bottom (executed with nbclient) and are committed clean."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from cvae import train
from tests.conftest import make_test_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _execute(name: str):
    book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(book, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    return book


@pytest.fixture(autouse=True)
def single_device_kernel(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("CVAE_QUICKSTART_EPOCHS", "5")


@pytest.mark.parametrize("name", ["explore_latents.ipynb", "compare_runs.ipynb"])
def test_notebooks_are_committed_without_outputs(name):
    book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code")


def test_explore_latents_trains_the_quickstart_when_no_workdir_is_given(monkeypatch):
    monkeypatch.delenv("CVAE_WORKDIR", raising=False)
    book = _execute("explore_latents.ipynb")
    outputs = [o for c in book.cells for o in c.get("outputs", [])]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5


def test_explore_latents_on_a_conditional_run(monkeypatch, tmp_path):
    train.train_and_evaluate(make_test_config(**{"model.conditional": True}), tmp_path)
    monkeypatch.setenv("CVAE_WORKDIR", str(tmp_path))
    book = _execute("explore_latents.ipynb")
    text = "".join(o.get("text", "") for c in book.cells for o in c.get("outputs", []))
    assert "unconditional model" not in text


def test_compare_runs_builds_the_table():
    book = _execute("compare_runs.ipynb")
    text = "".join(o.get("text", "") for c in book.cells for o in c.get("outputs", []))
    for posterior in ("gaussian", "collapsed", "deterministic"):
        assert posterior in text
