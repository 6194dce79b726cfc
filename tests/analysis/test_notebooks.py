"""The notebooks run top to bottom (executed with nbclient) on the digits quickstart, on a
conditional run and on an unlabelled npz set; the committed copies carry the outputs of
``python -m experiments.notebooks --in_place`` and no error."""

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from cvae import data, training
from tests.helpers import ROOT, make_test_config

pytestmark = pytest.mark.slow

NOTEBOOKS = ["explore_latents.ipynb", "compare_runs.ipynb"]


def _execute(name: str):
    book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    return book


def _outputs(book):
    return [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(book):
    return "".join(o.get("text", "") for o in _outputs(book))


def _figures(book):
    return [o for o in _outputs(book) if "image/png" in o.get("data", {})]


@pytest.fixture(autouse=True)
def single_device_kernel(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("CVAE_QUICKSTART_EPOCHS", "5")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_show_their_outputs_and_no_error(name):
    book = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), (
        "run python -m experiments.notebooks --in_place"
    )
    assert not [o for o in _outputs(book) if o.get("output_type") == "error"]
    assert len(_figures(book)) >= 3


def test_explore_latents_trains_the_quickstart_when_no_workdir_is_given(monkeypatch):
    monkeypatch.delenv("CVAE_WORKDIR", raising=False)
    # Two panels side by side; UMAP's own fit (and its ~8 s of numba compilation) is
    # tested in tests/analysis/test_explore.py.
    monkeypatch.setenv("CVAE_PROJECTIONS", "pca,tsne")
    book = _execute("explore_latents.ipynb")
    assert "no UMAP panel" not in _text(book)  # the notebooks extra is installed
    assert len(_figures(book)) >= 8  # recon, histograms, projections, …, neighbours
    text = _text(book)
    assert "median distance of samples to their nearest training image" in text
    assert "does not apply: unconditional model" in text
    assert "does not apply: one stochastic layer" in text


def test_explore_latents_on_a_conditional_tokenizer_with_a_latent_dit(monkeypatch, tmp_path):
    """A conditional tokenizer (2×2×1 code maps: few enough numbers for a mixture per class
    of the digits) with a latent DiT on its codes: the class-conditional rows, the code
    map's channels and the DiT's samples are drawn too."""
    from cvae.training import latent

    tokenizer = {
        "model.arch": "conv_map",
        "model.conv_channels": (8, 8),
        "model.code_channels": 1,
    }
    config = make_test_config(**{"model.conditional": True, **tokenizer})
    training.train_and_evaluate(config, tmp_path)
    dit = latent.latent_config()
    dit.update(width=32, depth=1, heads=2, num_steps=20, steps_per_call=10, warmup_steps=2)
    latent.train_latent(dit, tmp_path, progress=False)
    monkeypatch.setenv("CVAE_WORKDIR", str(tmp_path))
    monkeypatch.setenv("CVAE_PROJECTIONS", "pca")  # t-SNE: drawn by the quickstart
    book = _execute("explore_latents.ipynb")
    text = _text(book)
    assert "unconditional model" not in text and "not a map" not in text
    assert len(_figures(book)) >= 10  # the class-conditional rows and the channels too
    sources = "".join(c.source for c in book.cells if c.cell_type == "code")
    assert 'samplers.append("latent_diffusion")' in sources


def _unlabelled_npz(tmp_path):
    digits, test = data.load("digits", "train"), data.load("digits", "test")
    npz = tmp_path / "unlabelled.npz"
    np.savez(npz, x=digits.images[..., 0], x_test=test.images[..., 0])  # no y
    return npz


def test_explore_latents_on_unlabelled_data_and_two_stochastic_layers(monkeypatch, tmp_path):
    """An unlabelled npz set and a two-layer model in one kernel: the cells that read
    labels, and the per-layer section (traversals of the top layer, active units per
    layer), which a one-layer run skips."""
    workdir = tmp_path / "run"
    training.train_and_evaluate(
        make_test_config(
            **{
                "data.name": f"npz:{_unlabelled_npz(tmp_path)}",
                "train.num_epochs": 2,
                "model.upper_latent_dims": (2,),
                "model.upper_widths": ((8,),),
            }
        ),
        workdir,
    )
    monkeypatch.setenv("CVAE_WORKDIR", str(workdir))
    monkeypatch.setenv("CVAE_PROJECTIONS", "pca")  # panels are drawn by the same loop
    book = _execute("explore_latents.ipynb")
    text = _text(book)
    assert "labels: none (unlabelled data)" in text and "(layers of 4, 2)" in text
    assert "active units per layer: layer 1:" in text and "/2" in text
    assert len(_figures(book)) >= 9  # the per-layer traversals too


def test_compare_runs_labels_runs_by_name_and_plots_sigma0():
    book = _execute("compare_runs.ipynb")
    text = _text(book) + "".join(
        str(o.get("data", {}).get("text/plain", "")) for o in _outputs(book)
    )
    for label in (
        "vae (gaussian)",
        "cvae_s0.01 (collapsed, σ₀=0.01)",
        "cvae_s0.1 (collapsed, σ₀=0.1)",
        "ae (deterministic)",
    ):
        assert label in text
    assert "does not apply" not in text  # two σ₀ values: the σ₀ figure is drawn
    assert len(_figures(book)) == 3


def test_compare_runs_on_unlabelled_runs_given_by_the_user(monkeypatch, tmp_path):
    import cvae

    npz = _unlabelled_npz(tmp_path)
    workdirs = []
    for sigma0 in (0.01, 0.3):
        workdir = tmp_path / f"s{sigma0}"
        training.train_and_evaluate(
            make_test_config(
                **{"data.name": f"npz:{npz}", "model.sigma0": sigma0, "train.num_epochs": 2}
            ),
            workdir,
        )
        cvae.Workdir(workdir).write_eval(cvae.load_run(workdir).evaluate("test", k=5))
        workdirs.append(str(workdir))
    monkeypatch.setenv("CVAE_WORKDIRS", ":".join(workdirs))
    book = _execute("compare_runs.ipynb")
    assert "s0.3 (collapsed, σ₀=0.3)" in _text(book) + "".join(
        str(o.get("data", {}).get("text/plain", "")) for o in _outputs(book)
    )
    assert len(_figures(book)) == 3  # curves, bars, the σ₀ figure


def test_the_launcher_writes_executed_copies_and_leaves_the_committed_ones(tmp_path):
    """``experiments.notebooks`` writes to ``--out``; only ``--in_place`` would rewrite
    notebooks/ (not run here: it is the refresh of the committed copies)."""
    from tests.helpers import run_cli

    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), tmp_path / "run")
    committed = (ROOT / "notebooks" / "compare_runs.ipynb").read_bytes()
    out = run_cli(
        "experiments.notebooks",
        *["--out", str(tmp_path / "executed"), "compare_runs.ipynb"],
        env={"CVAE_WORKDIRS": str(tmp_path / "run"), "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"written to {tmp_path / 'executed' / 'compare_runs.ipynb'}" in out.stdout
    book = nbformat.read(tmp_path / "executed" / "compare_runs.ipynb", as_version=4)
    assert all(c.get("execution_count") for c in book.cells if c.cell_type == "code")
    assert (ROOT / "notebooks" / "compare_runs.ipynb").read_bytes() == committed
