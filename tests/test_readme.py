"""The README's quick tour runs as pasted: its shell commands (all but the ones that need
MNIST) and then its Python block, in a fresh directory, with only the environment `make`
creates (``python`` on the PATH is the project's)."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from tests import launcher
from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = re.search(r"^## ", text[start + len(heading) :], re.M)
    return text[start : start + len(heading) + following.start()] if following else text[start:]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    return [
        line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")
    ]


def test_the_quick_tour_runs_as_pasted(tmp_path):
    """The tour trains a digits run (150 epochs), evaluates and samples it, and sweeps 6
    members for 20 epochs: about a minute of CPU, the price of checking what a new user
    types first."""
    tour = _section((ROOT / "README.md").read_text(), "## A quick tour")
    commands = [c for c in _commands(_blocks(tour, "bash")[0]) if "mnist" not in c]
    assert len(commands) >= 5, commands
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")  # the paths the tour names
    env = {
        **os.environ,
        "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "",
    }
    for command in commands:
        assert command.startswith("python -m experiments."), command
        # `python -m MODULE ARGS` as the launcher runs it: a forked process that runs the
        # module as __main__ in this directory and environment (imports done once)
        _, _, module, *args = shlex.split(command)
        out = launcher.run(module, *args, cwd=tmp_path, env=env, timeout=600)
        assert out.returncode == 0, f"{command}\n{out.stderr[-2000:]}"
    assert (tmp_path / "runs" / "tour" / "samples_gmm.png").stat().st_size > 0
    assert (tmp_path / "runs" / "tour_sweep" / "sigma0=0.1" / "seed=2" / "eval.json").exists()

    python = _blocks(tour, "python")[0]
    out = subprocess.run(
        [sys.executable, "-c", python],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
