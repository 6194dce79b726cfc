"""Execute the notebooks: ``python -m experiments.notebooks [--epochs E] [--out DIR |
--in_place] [NAME.ipynb ...]``.

Each notebook runs top to bottom with nbclient on ``CVAE_WORKDIR``/``CVAE_WORKDIRS``, or on
the digits quickstart (trained into a temporary directory) when they are unset, and is
written with its outputs to ``--out`` (default ``build/notebooks/``); the committed copies
in ``notebooks/`` are rewritten only with ``--in_place``, which is how they are refreshed so
that readers see the figures on any notebook viewer without running anything
(``tests/analysis/test_notebooks.py`` checks that the committed outputs hold no error and
that the notebooks still execute).
"""

import os
import pathlib

import nbformat
from absl import flags
from nbclient import NotebookClient

from experiments import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ("explore_latents.ipynb", "compare_runs.ipynb")
flags.DEFINE_integer("epochs", None, "Quickstart epochs (default: the config's, 150).")
flags.DEFINE_string("out", "build/notebooks", "Where the executed notebooks are written.")
flags.DEFINE_bool(
    "in_place", False, "Rewrite the committed notebooks in notebooks/ instead (a refresh)."
)
FLAGS = flags.FLAGS


def execute(name: str, epochs: int | None = None) -> nbformat.NotebookNode:
    """Runs ``notebooks/NAME`` and returns it with its outputs (not written)."""
    path = ROOT / "notebooks" / name
    if not path.is_file():
        raise cli.UsageError(f"no notebook {path}; the notebooks are {', '.join(NOTEBOOKS)}")
    if epochs is not None:
        os.environ["CVAE_QUICKSTART_EPOCHS"] = str(epochs)
    book = nbformat.read(path, as_version=4)
    NotebookClient(
        book, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    return book


def main(argv):
    names = argv[1:] or list(NOTEBOOKS)
    os.environ.setdefault("XLA_FLAGS", "")
    out = ROOT / "notebooks" if FLAGS.in_place else pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        book = execute(name, FLAGS.epochs)
        nbformat.write(book, out / name)
        images = sum(
            "image/png" in o.get("data", {}) for c in book.cells for o in c.get("outputs", [])
        )
        print(f"executed notebooks/{name}: {images} figures, written to {out / name}")


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main, positional=True)


if __name__ == "__main__":
    entry()
