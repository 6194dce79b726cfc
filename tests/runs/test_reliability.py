"""Nothing lost under a crash or a mistake: kills at known points, damaged checkpoints, torn
metrics, a second writer, a full disk. Kills are real SIGKILLs of a training
subprocess, placed by the fail points of cvae.faults (CVAE_FAULT="name:n")."""

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import cvae
from cvae import training
from cvae.runs import checkpoint
from cvae.runs.workdir import Workdir, WorkdirLockedError
from tests import launcher
from tests.helpers import ROOT, make_test_config

pytestmark = pytest.mark.slow

SMALL = [
    f"--config.{k}={v}"
    for k, v in {
        "model.encoder_widths": "(32,16)",
        "model.latent_dim": 4,
        "train.batch_size": 64,
        "train.num_epochs": 6,
        "data.validation_size": 100,
        "train.image_grid_size": 0,
        "train.num_devices": 1,
        "eval.every_epochs": 1,
        "train.checkpoint_every_epochs": 2,
        "train.keep_checkpoints": 2,
    }.items()
]
TIMING = ("examples_per_s", "elapsed_s")


def _train_cli(workdir, fault=None, extra=(), fresh=False, wait=True):
    args = [
        "--config",
        "experiments/configs/digits_cvae.py",
        "--workdir",
        str(workdir),
        *SMALL,
        *extra,
    ]
    if not wait:
        return launcher.start("experiments.train", *args, env={"CVAE_FAULT": fault})
    return launcher.run("experiments.train", *args, env={"CVAE_FAULT": fault}, fresh=fresh)


def _metrics(workdir):
    return [
        {k: v for k, v in r.items() if k not in TIMING} for r in Workdir(workdir).read_metrics()
    ]


def _assert_same_run(a, b):
    """Params of the latest and of the best checkpoint bitwise equal, the same best epoch,
    and metrics.jsonl equal record for record (timings aside)."""
    for which in ("latest", "best"):
        run_a, run_b = cvae.load_run(a, which), cvae.load_run(b, which)
        assert run_a.meta["epoch"] == run_b.meta["epoch"], which
        for x, y in zip(
            jax.tree_util.tree_leaves(run_a.params),
            jax.tree_util.tree_leaves(run_b.params),
            strict=True,
        ):
            np.testing.assert_array_equal(x, y)
    assert _metrics(a) == _metrics(b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole")
    # A fresh interpreter; the killed and resumed runs are forked from the test launcher:
    # their string-hash seeds differ, so a dependence on set order would show.
    out = _train_cli(workdir, fresh=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        "checkpoint_inside_save:1",  # inside the very first save (nothing saved before it)
        "checkpoint_save:2",  # after epoch 1's new best was saved, before its periodic save
        "metrics_write:3",  # mid-line: epoch 2's train record torn in half
        "checkpoint_inside_save:4",  # inside a later save, older saves on disk
        "checkpoint_save:5",  # between two saves of a later epoch
        "metrics_write:10",  # a torn validation record late in the run
    ],
)
def test_a_kill_anywhere_then_a_rerun_equals_the_uninterrupted_run(fault, uninterrupted, tmp_path):
    killed = _train_cli(tmp_path, fault)
    assert killed.returncode == -9, (fault, killed.stderr[-1500:])  # the kill did happen
    rerun = _train_cli(tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Traceback" not in rerun.stderr
    _assert_same_run(tmp_path, uninterrupted)
    leftovers = [p for p in (tmp_path / "checkpoints").rglob("*") if "tmp" in p.name]
    assert not leftovers and not (tmp_path / ".lock").exists()


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing(uninterrupted, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(uninterrupted, copy)
    again = _train_cli(copy)
    assert again.returncode == 0, again.stderr[-2000:]
    _assert_same_run(copy, uninterrupted)
    assert [r["split"] for r in Workdir(copy).read_metrics()].count("test") == 1


# ----------------------------------------------------------------- damaged checkpoints


def _garble(step_dir: pathlib.Path) -> None:
    for file in step_dir.rglob("*"):
        if file.is_file():
            file.write_bytes(b"\x00garbage")


def _truncate(step_dir: pathlib.Path) -> None:
    for file in step_dir.rglob("*"):
        if file.is_file():
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def test_every_latest_save_damaged_resumes_from_best_without_duplicate_metrics(tmp_path):
    cfg = lambda epochs: make_test_config(**{"train.num_epochs": epochs})
    whole = training.train_and_evaluate(cfg(3), tmp_path / "whole")
    training.train_and_evaluate(cfg(2), tmp_path / "torn")
    latest = tmp_path / "torn" / "checkpoints" / "latest"
    for step_dir in [p for p in latest.iterdir() if p.name.isdigit()]:
        _garble(step_dir)
    resumed = training.train_and_evaluate(cfg(3), tmp_path / "torn")
    assert resumed.epoch == 3
    for x, y in zip(
        jax.tree_util.tree_leaves(whole.state["params"]),
        jax.tree_util.tree_leaves(resumed.state["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    keys = [(r["split"], r["epoch"]) for r in Workdir(tmp_path / "torn").read_metrics()]
    assert len(keys) == len(set(keys)) and keys[0] == ("train", 1)


def test_damaged_best_falls_back_to_latest_with_a_warning(tmp_path, caplog):
    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 2}), tmp_path)
    for step_dir in (tmp_path / "checkpoints" / "best").iterdir():
        if step_dir.name.isdigit():
            _garble(step_dir)
    with caplog.at_level("WARNING", logger="cvae"):
        run = cvae.load_run(tmp_path)  # which="best"
    assert run.meta["epoch"] == 2
    assert any("no readable best checkpoint" in r.message for r in caplog.records)


def _truncate_array_data(step_dir: pathlib.Path) -> None:
    """Only the arrays' data files: the metadata reads, so the restore starts many reads."""
    for file in step_dir.rglob("d/*"):
        file.write_bytes(file.read_bytes()[:10])


@pytest.mark.parametrize("damage", [_garble, _truncate, _truncate_array_data])
def test_a_damaged_checkpoint_costs_one_warning_line_not_tracebacks(tmp_path, damage):
    first = _train_cli(tmp_path, extra=["--config.train.num_epochs=2"])
    assert first.returncode == 0, first.stderr[-2000:]
    latest = tmp_path / "checkpoints" / "latest"
    damage(latest / max((p.name for p in latest.iterdir() if p.name.isdigit()), key=int))
    again = _train_cli(tmp_path, extra=["--config.train.num_epochs=3"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in again.stderr and "Event loop is closed" not in again.stderr
    assert "was never awaited" not in again.stderr
    assert again.stderr.count("could not be restored") == 1


# ------------------------------------------------------------------------- metrics


def test_a_torn_metrics_line_is_dropped_and_rewritten_on_resume(tmp_path):
    whole = training.train_and_evaluate(
        make_test_config(**{"train.num_epochs": 3}), tmp_path / "whole"
    )
    del whole
    wd = Workdir(tmp_path / "torn")
    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 2}), wd.path)
    with wd.metrics_path.open("a") as f:
        f.write('{"step": 999, "epoch": 3, "split": "tr')  # a kill mid-write
    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 3}), wd.path)
    lines = wd.metrics_path.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line whole again
    strip = lambda w: [
        {k: v for k, v in r.items() if k not in TIMING} for r in Workdir(w).read_metrics()
    ]
    assert strip(wd.path) == strip(tmp_path / "whole")


# ---------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / ".lock").write_text(
            json.dumps({"pid": holder.pid, "host": os.uname().nodename, "since": 0})
        )
        with pytest.raises(WorkdirLockedError, match=rf"process {holder.pid} on"):
            training.train_and_evaluate(make_test_config(), tmp_path)
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(
        json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": 0})
    )
    with caplog.at_level("WARNING", logger="cvae"):
        result = training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), tmp_path)
    assert result.epoch == 1 and not (tmp_path / ".lock").exists()
    assert any("taking over the lock" in r.message for r in caplog.records)


@pytest.mark.slow
def test_two_trainings_in_one_workdir_the_second_exits_in_one_line(tmp_path):
    first = _train_cli(
        tmp_path,
        extra=["--config.train.num_epochs=3000", "--config.eval.every_epochs=1000"],
        wait=False,
    )
    try:
        import time

        deadline = time.time() + 120
        while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = _train_cli(tmp_path)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by process {first.pid}" in lines[0], lines
    finally:
        first.kill()
        first.communicate()


# ------------------------------------------------------------------------ full disk


def test_a_full_disk_while_checkpointing_names_the_intact_checkpoint(tmp_path, monkeypatch):
    real_write = checkpoint._write

    def write_until_the_disk_fills(manager, step, state, meta):
        if step > 21:  # epoch 1's best and latest saves fit; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(manager, step, state, meta)

    monkeypatch.setattr(checkpoint, "_write", write_until_the_disk_fills)
    cfg = make_test_config(**{"train.num_epochs": 3})
    with pytest.raises(
        checkpoint.CheckpointWriteError,
        match=r"No space left on device.*previous checkpoint \(step 21\) is intact",
    ):
        training.train_and_evaluate(cfg, tmp_path)
    monkeypatch.setattr(checkpoint, "_write", real_write)
    leftovers = [p.name for p in (tmp_path / "checkpoints").rglob("*") if "tmp" in p.name]
    assert not leftovers
    resumed = training.train_and_evaluate(cfg, tmp_path)  # space freed: the rerun finishes
    whole = training.train_and_evaluate(cfg, tmp_path / "whole")
    for x, y in zip(
        jax.tree_util.tree_leaves(whole.state["params"]),
        jax.tree_util.tree_leaves(resumed.state["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_full_disk_in_the_command_line_is_one_line_and_status_1(tmp_path):
    script = (
        "import errno, runpy, sys\n"
        "from cvae.runs import checkpoint\n"
        "def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "checkpoint._write = full\n"
        f"sys.argv = ['train', '--config', 'experiments/configs/digits_cvae.py', "
        f"'--workdir', {str(tmp_path)!r}] + {SMALL!r}\n"
        "runpy.run_module('experiments.train', run_name='__main__')\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert "Traceback" not in out.stderr


def test_a_real_full_disk_is_one_line_status_1_and_the_rerun_resumes(tmp_path):
    """On a real 3 MB file system (tmpfs) filled after the first checkpoints: the failed
    save is one line, status 1, no traceback from Orbax's writer threads; the previous
    checkpoint is intact and, space freed, the same command finishes the run."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {mounted.stderr.decode().strip()}")
    try:
        first = _train_cli(disk / "run", extra=["--config.train.num_epochs=2"])
        assert first.returncode == 0, first.stderr[-2000:]
        free_kb = shutil.disk_usage(disk).free // 1024
        filler = disk / "filler"
        filler.write_bytes(b"\0" * ((free_kb - 40) * 1024))  # 40 KB left: no room for a save
        full = _train_cli(disk / "run", extra=["--config.train.num_epochs=4"])
        assert full.returncode == 1, full.stderr[-2000:]
        errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "could not write checkpoint" in errors[0], errors
        assert "the previous checkpoint (step" in errors[0] and "is intact" in errors[0]
        assert "Traceback" not in full.stderr and "Event loop is closed" not in full.stderr
        assert "never retrieved" not in full.stderr
        filler.unlink()
        rerun = _train_cli(disk / "run", extra=["--config.train.num_epochs=4"])
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert Workdir(disk / "run").read_metrics("test")[-1]["epoch"] == 4
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# Early stopping on, validation every second epoch: a stop between two evaluations must
# neither add a validation record nor move model selection or the patience count.
SELECTING = ["--config.eval.every_epochs=2", "--config.train.early_stopping_patience=2"]


@pytest.mark.slow
def test_a_sigterm_between_evaluations_resumes_to_the_uninterrupted_run_record_for_record(
    tmp_path,
):
    whole = _train_cli(tmp_path / "whole", extra=SELECTING, fresh=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    stopped = _train_cli(tmp_path / "split", "epoch_end:3:SIGTERM", extra=SELECTING)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "SIGTERM received: saved step" in stopped.stderr
    records = Workdir(tmp_path / "split").read_metrics()
    assert [r["epoch"] for r in records if r["split"] != "train"] == [2]  # none at the stop
    assert records[-1]["epoch"] == 3
    rerun = _train_cli(tmp_path / "split", extra=SELECTING)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _assert_same_run(tmp_path / "split", tmp_path / "whole")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A one-epoch digits run and its uninterrupted evaluation's scores (K = 5, batches of
    100 of the 297 test digits: 3 batches)."""
    workdir = tmp_path_factory.mktemp("evaluated")
    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), workdir)
    out = _evaluate_cli(workdir)
    assert out.returncode == 0, out.stderr[-2000:]
    return workdir, Workdir(workdir).read_eval()


def _evaluate_cli(workdir, fault=None, k=5):
    return launcher.run(
        "experiments.evaluate",
        *["--workdir", str(workdir), "--k", str(k), "--batch_size", "100"],
        env={"CVAE_FAULT": fault},
    )


@pytest.mark.parametrize(
    "fault, resumed_at",
    [
        ("evaluate_batch:2", 2),  # between batches, after the second batch's scores
        ("partial_scores_save:3", 2),  # inside the third save, before its rename
    ],
)
def test_a_killed_evaluation_resumes_at_its_batch_and_ends_with_the_same_scores(
    evaluated, tmp_path, fault, resumed_at
):
    """A SIGKILLed ``experiments.evaluate`` leaves its partial scores (never a torn file);
    the same command resumes at the batch they reached, writes the scores of an evaluation
    never stopped — bitwise — and removes them."""
    source, expected = evaluated
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    Workdir(workdir).eval_path.unlink()
    killed = _evaluate_cli(workdir, fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = Workdir(workdir).partial_eval_path
    assert partial.exists() and not Workdir(workdir).eval_path.exists()
    rerun = _evaluate_cli(workdir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming at batch {resumed_at} of 3" in rerun.stderr
    assert Workdir(workdir).read_eval() == expected
    assert not partial.exists() and not list(workdir.glob(".eval_partial*"))


def test_partial_scores_of_another_evaluation_are_ignored_with_a_warning(evaluated, tmp_path):
    """Partial scores left by K = 5 do not leak into a K = 3 evaluation: it says so, starts
    from the first batch and ends with what K = 3 scores without them."""
    source, _ = evaluated
    workdir, reference = tmp_path / "run", tmp_path / "reference"
    shutil.copytree(source, workdir)
    shutil.copytree(source, reference)
    assert _evaluate_cli(workdir, "evaluate_batch:2").returncode == -9
    other = _evaluate_cli(workdir, k=3)
    assert other.returncode == 0, other.stderr[-2000:]
    assert "belong to another evaluation (k)" in other.stderr
    assert "resuming" not in other.stderr
    assert _evaluate_cli(reference, k=3).returncode == 0
    assert Workdir(workdir).read_eval() == Workdir(reference).read_eval()
    assert not Workdir(workdir).partial_eval_path.exists()
