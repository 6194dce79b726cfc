"""Multi-process training on JAX's distributed runtime, on loopback: 2 processes × 2 CPU
devices talking through gloo must train the model a 1-process × 4-device run trains."""

import ast
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import cvae
from cvae import Workdir
from cvae.training import sweep
from experiments import launch_local
from experiments.configs import digits_cvae
from tests.helpers import ROOT, TINY, run_cli, write_random_colour_tfds

pytestmark = pytest.mark.slow

# Every device of every process: the global batch of 64 splits 4 ways in both layouts.
ALL_DEVICES = [*TINY, "--config.train.num_devices=0"]
# A two-layer hierarchy inferred top-down (collapsed z₁, Gaussian z₂): the multi-process run
# covers the one-layer machinery and the hierarchy's extra nets and per-layer terms at once.
TWO_LAYERS = [
    "--config.model.upper_latent_dims=(2,)",
    "--config.model.upper_widths=((8,),)",
    "--config.model.upper_posteriors=('gaussian',)",
    "--config.model.inference=top_down",
]
DIGITS = ["--config", "experiments/configs/digits_cvae.py"]
# The one-process reference: four CPU devices in a process forked by the test launcher.
FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def _launch(workdir, epochs, *extra, timeout=300, env=None):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.launch_local",
            "--num_processes=2",
            "--devices_per_process=2",
            "--heartbeat_timeout_s=20",
            "--",
            *DIGITS,
            *ALL_DEVICES,
            f"--config.train.num_epochs={epochs}",
            "--workdir",
            str(workdir),
            *extra,
        ],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": "", **(env or {})},
        timeout=timeout,
        capture_output=True,
        text=True,
    )


def test_two_processes_train_what_one_process_with_four_devices_trains(tmp_path):
    """A two-layer model inferred top-down: two processes × two devices train (and resume to)
    what one process with four devices trains, with one writer."""
    # Two epochs, then a second launch resumes to three: resume across processes.
    first = _launch(tmp_path / "mp", 2, *TWO_LAYERS)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "2 local and 4 global devices" in first.stdout
    second = _launch(tmp_path / "mp", 3, *TWO_LAYERS)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
    assert "resumed from step" in second.stdout

    single = run_cli(
        "experiments.train",
        *DIGITS,
        *ALL_DEVICES,
        *TWO_LAYERS,
        "--config.train.num_epochs=3",
        "--workdir",
        str(tmp_path / "sp"),
        env=FOUR_DEVICES,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert "devices: 4 × cpu in 1 process(es)" in single.stderr

    multi = cvae.load_run(tmp_path / "mp", which="latest")
    reference = cvae.load_run(tmp_path / "sp", which="latest")
    assert set(multi.params) == {
        *("trunk_1", "trunk_2", "posterior_1", "posterior_2"),
        *("decoder", "down_2"),
    }
    leaves = jax.tree_util.tree_leaves
    for x, y in zip(leaves(multi.params), leaves(reference.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

    # One writer: every record once (two writers would double them), and the training
    # curve and final test score are those of the single-process run.
    records = Workdir(tmp_path / "mp").read_metrics()
    expected = Workdir(tmp_path / "sp").read_metrics()
    keys = [(r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys))
    curve = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in curve] == [r["step"] for r in expected if r["split"] == "train"]
    for got, want in zip(
        curve + records[-1:], [r for r in expected if r["split"] == "train"] + expected[-1:]
    ):
        assert (got["split"], got["step"]) == (want["split"], want["step"])
        for term in ("elbo", "kl_1", "kl_2"):
            assert got[term] == pytest.approx(want[term], rel=1e-5)
    # The resume to 3 epochs is a config change, recorded once (by the primary process).
    (change,) = Workdir(tmp_path / "mp").read_config_history()
    assert change["changes"] == {"train.num_epochs": [2, 3]} and change["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "mp").iterdir()) == sorted(
        [p.name for p in (tmp_path / "sp").iterdir()] + ["config_history.jsonl"]
    )


def test_two_processes_stream_their_rows_of_each_batch_like_one_process(tmp_path):
    """The streaming pipeline across processes, on random 64×64×3 images written as a TFDS
    data set: each process reads only its rows of every batch
    (jax.make_array_from_process_local_data); the run equals the on-device one of 1 × 4."""
    name = write_random_colour_tfds(tmp_path / "tfds", num_train=228, num_test=32)
    colour = [
        f"--config.data.name={name}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.data.binarize=none",
        "--config.model.likelihood=gaussian",
        "--config.data.validation_size=100",
        "--config.train.image_grid_size=0",
    ]
    cache = {"CVAE_CACHE_DIR": str(tmp_path / "cache")}
    stream = ["--config.data.pipeline=stream", "--config.data.stream_chunk_steps=1"]
    multi = _launch(tmp_path / "mp", 2, *colour, *stream, env=cache)
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-2000:]
    single = run_cli(
        "experiments.train",
        *DIGITS,
        *ALL_DEVICES,
        *colour,
        "--config.train.num_epochs=2",
        "--config.data.pipeline=device",
        "--workdir",
        str(tmp_path / "sp"),
        env={**FOUR_DEVICES, **cache},
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert "devices: 4 × cpu in 1 process(es)" in single.stderr
    leaves = jax.tree_util.tree_leaves
    for x, y in zip(
        leaves(cvae.load_run(tmp_path / "mp", which="latest").params),
        leaves(cvae.load_run(tmp_path / "sp", which="latest").params),
        strict=True,
    ):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("victim", [1, 0], ids=["worker-killed", "coordinator-killed"])
def test_killing_one_process_stops_the_other_with_a_clear_error(victim, tmp_path):
    commands = launch_local.process_commands(
        [
            *DIGITS,
            *ALL_DEVICES,
            "--config.train.num_epochs=100000",
            "--workdir",
            str(tmp_path / "run"),
        ],
        num_processes=2,
        port=launch_local.free_port(),
        heartbeat_timeout_s=5,
    )
    env = launch_local.child_env(2, {**os.environ, "XLA_FLAGS": ""})
    procs = [
        subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for cmd in commands
    ]
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.time() + 180
        while time.time() < deadline and len(Workdir(metrics.parent).read_metrics()) < 2:
            assert all(p.poll() is None for p in procs), "a process stopped before the kill"
            time.sleep(0.2)
        assert len(Workdir(metrics.parent).read_metrics()) >= 2, "training never got going"
        procs[victim].kill()
        killed_at = time.time()
        survivor = procs[1 - victim]
        _, err = survivor.communicate(timeout=90)  # raises (fails the test) if it hangs
        assert time.time() - killed_at < 60
        assert survivor.returncode != 0
        # On failure show the error and fatal log lines: the tail of an abort is only
        # Python's list of loaded extension modules.
        alarms = [
            line
            for line in err.splitlines()
            if line[:1] in "EF" and line[1:5].isdigit() or "Error" in line
        ]
        assert "another task died" in err, "\n".join(alarms)[-3000:] or err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_launcher_without_training_flags_says_how_to_use_it():
    out = run_cli("experiments.launch_local", "--num_processes=2")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: give the training flags after `--`")


def test_a_sweep_spans_two_processes_with_the_numbers_of_one(tmp_path):
    # 4 members over 2 processes × 2 devices: the member axis crosses processes.
    grid = ["--seeds", "0:2", "--grid", "model.sigma0=0.01,0.3"]
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.launch_local",
            "--module",
            "experiments.sweep",
            "--num_processes=2",
            "--devices_per_process=2",
            "--heartbeat_timeout_s=20",
            "--",
            *DIGITS,
            *ALL_DEVICES,
            *grid,
            "--workdir",
            str(tmp_path / "mp"),
        ],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": ""},
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-2000:]
    assert "4 members, 4 × 1 (member × data) devices" in launched.stdout

    base = digits_cvae.get_config()
    for flag in ALL_DEVICES:
        dotted, value = flag[len("--config.") :].split("=")
        node = base
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = type(node[leaf])(ast.literal_eval(value))
    base.train.num_devices = 4  # one process, the same four-way member axis
    sweep.run_sweep(base, tmp_path / "sp", seeds=[0, 1], grid={"model.sigma0": [0.01, 0.3]})
    for name in json.loads((tmp_path / "mp" / "sweep.json").read_text())["members"]:
        multi = cvae.load_run(tmp_path / "mp" / name, which="latest")
        reference = cvae.load_run(tmp_path / "sp" / name, which="latest")
        for x, y in zip(
            jax.tree_util.tree_leaves(multi.params),
            jax.tree_util.tree_leaves(reference.params),
            strict=True,
        ):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        assert len(Workdir(tmp_path / "mp" / name).read_metrics("test")) == 1
