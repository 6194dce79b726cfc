"""End-to-end tests of the launchers, run as a user runs them (subprocesses)."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import cvae
from cvae import Workdir, training
from cvae import config as config_lib
from tests import launcher
from tests.helpers import ROOT, TINY, make_test_config, run_cli

pytestmark = pytest.mark.slow

_cli = run_cli


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    out = _cli(
        "experiments.train",
        "--config",
        "experiments/configs/digits_cvae.py",
        "--workdir",
        str(workdir),
        *TINY,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def test_a_long_evaluation_off_a_terminal_says_how_far_it_got(trained_workdir, tmp_path):
    """Ten batches or more and no terminal: about ten lines, each with the batch reached,
    the speed and the time left (the 297 test digits in 15 batches of 20: every second
    batch and the last)."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    out = _cli("experiments.evaluate", "--workdir", str(workdir), "--k", "2", "--batch_size", "20")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if "evaluate test: batch " in line]
    assert [re.search(r"batch (\d+)/15,", line).group(1) for line in lines] == [
        *("2", "4", "6", "8", "10", "12", "14", "15")
    ], out.stderr
    assert all(re.search(r", \d+ examples/s, about \d+ s left$", line) for line in lines)
    assert "\r" not in out.stderr  # no bar


def test_train_evaluate_sample_and_load_run_end_to_end(trained_workdir, tmp_path):
    out = _cli("experiments.evaluate", "--workdir", str(trained_workdir), "--k", "50")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((trained_workdir / "eval.json").read_text())
    for key in ("nll_is", "elbo", "recon", "kl", "active_units", "k", "split", "num_examples"):
        assert key in result
    assert all(math.isfinite(result[k]) for k in ("nll_is", "elbo", "recon", "kl"))
    assert result["k"] == 50 and result["split"] == "test" and result["num_examples"] == 297
    assert result["nll_is"] <= -result["elbo"]  # log p̂(x) is tighter than the ELBO
    assert "nll_is" in out.stdout

    png = tmp_path / "grid.png"
    out = _cli(
        "experiments.sample",
        "--workdir",
        str(trained_workdir),
        "--n",
        "16",
        "--sampler",
        "gmm",
        "--out",
        str(png),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert png.stat().st_size > 0

    out = _cli("experiments.evaluate", "--workdir", str(trained_workdir))
    assert out.returncode == 0, out.stderr[-3000:]
    # K defaults to the run's eval.num_importance_samples (digits_cvae: 1000)
    assert json.loads((trained_workdir / "eval.json").read_text())["k"] == 1000

    run = cvae.load_run(trained_workdir)
    assert len(repr(run)) < 300 and "collapsed" in repr(run)  # no parameter arrays
    with pytest.raises(ValueError, match="which must be one of"):
        cvae.load_run(trained_workdir, which="newest")
    x = run.info  # digits: 8×8×1
    images = np.asarray(cvae.data.load("digits", "test").images[:4])
    mean, log_var = run.encode(images)
    assert mean.shape == (4, 4) and log_var is None  # collapsed: fixed variance
    assert run.decode(mean).shape == (4,) + x.shape
    recon = run.reconstruct(images, jax.random.key(0))
    assert recon.shape == (4, 8, 8, 1) and float(recon.min()) >= 0 and float(recon.max()) <= 1
    a = run.sample(jax.random.key(1), 5, sampler="gmm")
    np.testing.assert_array_equal(a, run.sample(jax.random.key(1), 5, sampler="gmm"))
    assert run.sample(jax.random.key(1), 5, sampler="prior").shape == (5, 8, 8, 1)
    path = run.interpolate(images[0], images[1], steps=6)
    assert path.shape == (6, 8, 8, 1)
    np.testing.assert_allclose(path[0], run.mean_image(mean[:1])[0], atol=1e-5)


def test_conditional_model_draws_class_conditional_samples(tmp_path):
    cfg = make_test_config(**{"model.conditional": True})
    training.train_and_evaluate(cfg, tmp_path)
    run = cvae.load_run(tmp_path)
    threes = run.sample(jax.random.key(0), 8, sampler="prior", labels=3)
    sevens = run.sample(jax.random.key(0), 8, sampler="prior", labels=7)
    assert threes.shape == (8, 8, 8, 1) and not np.allclose(threes, sevens)
    # The ex-post density of a class is fitted to that class's codes alone.
    codes, labels = run.training_codes()
    three_mixture = run.latent_mixture(label=3)
    np.testing.assert_allclose(
        np.exp(three_mixture.log_weights) @ three_mixture.means,
        codes[labels == 3].mean(0),
        atol=1e-3,
    )
    mixed = run.sample(jax.random.key(2), 6, sampler="gmm", labels=np.array([3, 7, 3, 7, 3, 7]))
    direct = run.mean_image(three_mixture.sample(jax.random.fold_in(jax.random.key(2), 3), 3), 3)
    np.testing.assert_allclose(mixed[0::2], direct, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        run.sample(jax.random.key(0), 2, labels=10)
    # The diffusion sampler is one class-conditional model, guided from the command line;
    # its codes for a class sit near that class's training codes.
    out = _cli(
        "experiments.sample",
        "--workdir",
        str(tmp_path),
        "--sampler",
        "diffusion",
        "--label",
        "3",
        "--guidance",
        "1.0",
        "--n",
        "16",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "samples_diffusion.png").is_file()
    assert (tmp_path / "samplers" / "diffusion-conditional" / "sampler.json").is_file()
    sampler = cvae.load_run(tmp_path).ex_post("diffusion", conditional=True)
    drawn = np.asarray(sampler.sample(jax.random.key(0), 200, np.full(200, 3)))
    centres = np.stack([codes[labels == c].mean(0) for c in range(10)])
    nearest = np.argmin(((drawn[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    # A conditional decoder also sees the label, so its codes carry the class only in part:
    # measured 0.37 of the draws nearest the class-3 centre, against a tenth by chance.
    assert np.mean(nearest == 3) > 0.2
    refused = _cli("experiments.sample", "--workdir", str(tmp_path), "--guidance", "2")
    assert refused.returncode == 2 and "--guidance applies to" in refused.stderr


@pytest.mark.parametrize(
    "args,pattern",
    [
        (
            ["experiments.train", "--config", "experiments/configs/nope.py", "--workdir", "W"],
            "nope.py",
        ),
        (["experiments.train", "--config", "experiments/configs/digits_cvae.py"], "--workdir"),
        (
            [
                "experiments.train",
                "--config",
                "experiments/configs/digits_cvae.py",
                "--workdir",
                "W",
                "--config.model.latent_dim=0",
            ],
            "model.latent_dim",
        ),
        (
            [
                "experiments.train",
                "--config",
                "experiments/configs/digits_cvae.py",
                "--workdir",
                "W",
                "--distributed",
            ],
            "could not join a multi-process run",
        ),
        (
            [
                "experiments.train",
                "--config",
                "experiments/configs/digits_cvae.py",
                "--workdir",
                "W",
                "--num_processes=2",
                "--process_id=5",
            ],
            "--process_id = 5 must lie in [0, 2)",
        ),
        (["experiments.evaluate", "--workdir", "MISSING"], "does not exist"),
        (["experiments.evaluate", "--workdir", "EMPTY"], "no config.json"),
        (["experiments.evaluate", "--workdir", "NOCKPT"], "no checkpoint"),
        (["experiments.evaluate", "--workdir", "RUN", "--k", "0"], "--k must be ≥ 1"),
        (["experiments.evaluate", "--workdir", "RUN", "--batch_size", "0"], "--batch_size must"),
        (["experiments.evaluate", "--workdir", "RUN", "--batch_size=-3"], "--batch_size must"),
        (["experiments.sample", "--workdir", "RUN", "--label", "3"], "unconditional"),
        (["experiments.sample", "--workdir", "RUN", "--sampler", "gmm"], "training codes"),
        (
            ["experiments.sample_quality", "--workdir", "RUN", "--classifier", "EMPTY"],
            "no classifier",
        ),
    ],
)
def test_bad_use_gives_one_line_and_status_2(args, pattern, tmp_path, trained_workdir):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "NOCKPT").mkdir()
    (tmp_path / "NOCKPT" / "config.json").write_text((trained_workdir / "config.json").read_text())
    tiny_data = tmp_path / "tiny.npz"  # too few training codes for a 10-component mixture
    np.savez(tiny_data, x=np.zeros((30, 8, 8), np.uint8), x_test=np.zeros((5, 8, 8), np.uint8))
    if "RUN" in args and "gmm" in args:
        run_dir = tmp_path / "tinyrun"
        training.train_and_evaluate(
            make_test_config(
                **{
                    "data.name": f"npz:{tiny_data}",
                    "data.validation_size": 0,
                    "train.batch_size": 8,
                    "train.num_epochs": 1,
                    "train.image_grid_size": 0,
                }
            ),
            run_dir,
        )
    else:
        run_dir = trained_workdir
    places = {
        "W": str(tmp_path / "w"),
        "MISSING": str(tmp_path / "missing"),
        "EMPTY": str(tmp_path / "EMPTY"),
        "NOCKPT": str(tmp_path / "NOCKPT"),
        "RUN": str(run_dir),
    }
    out = _cli(*[places.get(a, a) for a in args])
    assert out.returncode == 2, (out.stdout, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], lines
    assert "Traceback" not in out.stderr


def test_sigterm_saves_and_the_rerun_finishes_with_nothing_lost(tmp_path):
    args = [
        "experiments.train",
        "--config",
        "experiments/configs/digits_cvae.py",
        *TINY,
        "--config.train.num_epochs=20",
        "--config.eval.every_epochs=20",
    ]
    proc = launcher.start(*args, "--workdir", str(tmp_path / "a"))
    metrics = tmp_path / "a" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and len(Workdir(metrics.parent).read_metrics()) < 3:
        time.sleep(0.02)
    # Paused while the signal arrives, so it lands a few epochs in however loaded the
    # machine is: the run stops after the epoch it is in, well before its 20th.
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]  # stopped before finishing: never 0
    assert "SIGTERM received" in err
    stopped_at = Workdir(metrics.parent).read_metrics()[-1]["epoch"]
    assert 3 <= stopped_at < 20
    rerun = _cli(*args, "--workdir", str(tmp_path / "a"))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # The run never stopped, in a fresh interpreter: its string-hash seed differs from the
    # forked processes', so a dependence on set order would show.
    whole = _cli(*args, "--workdir", str(tmp_path / "b"), fresh=True)
    assert whole.returncode == 0
    interrupted = cvae.load_run(tmp_path / "a", which="latest")
    uninterrupted = cvae.load_run(tmp_path / "b", which="latest")
    for x, y in zip(
        jax.tree_util.tree_leaves(interrupted.params),
        jax.tree_util.tree_leaves(uninterrupted.params),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)
    epochs = [r["epoch"] for r in Workdir(metrics.parent).read_metrics() if r["split"] == "train"]
    assert epochs == list(range(1, 21))


def test_report_prints_a_row_per_run_and_refuses_non_runs(trained_workdir, tmp_path):
    out = _cli("experiments.report", str(trained_workdir))
    assert out.returncode == 0, out.stderr[-2000:]
    table, _, provenance = out.stdout.strip().partition("\n\n")
    lines = table.splitlines()
    assert lines[0].startswith("| run | posterior") and len(lines) == 3
    assert provenance.startswith(f"Runs {trained_workdir.name}: ") and "jax " in provenance
    assert f"| {trained_workdir.name} | collapsed | elbo | 0.01 | 4 | 2 |" in lines[2]
    missing = _cli("experiments.report", str(tmp_path))
    assert missing.returncode == 2 and "no config.json" in missing.stderr


def test_ex_post_mixture_is_fitted_to_the_real_training_codes(trained_workdir):
    run = cvae.load_run(trained_workdir)
    train_set = cvae.data.load("digits", "train")
    inputs = cvae.data.fixed_binarization(train_set.images.astype(np.float32) / 255)
    codes = np.asarray(run.encode(inputs.astype(np.float32))[0])
    mixture = run.latent_mixture()
    weights = np.exp(mixture.log_weights)
    np.testing.assert_allclose(weights @ mixture.means, codes.mean(0), atol=1e-3)
    drawn = np.asarray(mixture.sample(jax.random.key(0), 20000))
    np.testing.assert_allclose(drawn.std(0), codes.std(0), rtol=0.1)  # spread like the codes


def test_sample_quality_scores_prior_and_mixture_samples(trained_workdir, tmp_path):
    out = _cli(
        "experiments.train_classifier", "--workdir", str(tmp_path / "clf"), "--dataset", "digits"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert summary["test_accuracy"] > 0.9 and summary["fid_train_vs_test"] > 0
    out = _cli(
        "experiments.sample_quality",
        "--workdir",
        str(trained_workdir),
        "--classifier",
        str(tmp_path / "clf"),
        "--n",
        "1000",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((trained_workdir / "sample_quality.json").read_text())
    assert result["fid_floor"] == summary["fid_train_vs_test"] and result["n"] == 1000
    assert 0 < result["fid_gmm"] and 0 < result["fid_prior"] and 0 < result["fid_diffusion"]
    for sampler in ("prior", "gmm", "flow", "two_stage", "diffusion"):
        for metric in ("precision", "recall", "coverage", "memorised", "memorised_features"):
            assert 0.0 <= result[f"{metric}_{sampler}"] <= 1.0, (metric, sampler)
        assert result[f"density_{sampler}"] >= 0.0
    assert "accuracy_prior" not in result  # unconditional run
    report = _cli("experiments.report", str(trained_workdir))
    assert f"{result['fid_gmm']:.2f}" in report.stdout
    # One sampler at a time: the others' scores stay while the draws are the same ones.
    rescore = [
        "--workdir",
        str(trained_workdir),
        "--classifier",
        str(tmp_path / "clf"),
        "--n",
        "1000",
        "--samplers",
        "prior",
    ]
    assert _cli("experiments.sample_quality", *rescore).returncode == 0
    again = json.loads((trained_workdir / "sample_quality.json").read_text())
    assert again == result
    assert _cli("experiments.sample_quality", *rescore, "--seed", "1").returncode == 0
    other_draws = json.loads((trained_workdir / "sample_quality.json").read_text())
    assert "fid_gmm" not in other_draws and other_draws["fid_prior"] != result["fid_prior"]


def test_the_results_page_quotes_what_the_quickstart_produces_now(tmp_path):
    """The results page's quickstart line must match `make run` as the code stands."""

    readme = (ROOT / "docs" / "results.md").read_text()
    quoted = re.search(
        r"\*\*Quickstart\*\*.*?test ELBO −([\d.]+) nats,\s+importance-sampled "
        r"NLL ([\d.]+) nats \(K = (\d+)\), (\d+)/(\d+) active units",
        readme,
        re.S,
    )
    assert quoted, "the results page's quickstart line changed form; update this test with it"
    out = _cli("experiments.main", "--workdir", str(tmp_path / "quick"), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    # Off a terminal `make run` fits on a screen: no bars, about ten train lines and one per
    # validation, plain time stamps, and the results last (stdout).
    log = out.stderr.splitlines()
    assert "\r" not in out.stderr and "%|" not in out.stderr, out.stderr[-2000:]
    assert len(log) <= 32, out.stderr
    assert len([line for line in log if "/150 step" in line]) == 11, out.stderr
    assert len([line for line in log if "validation ELBO" in line]) == 15, out.stderr
    assert all(re.match(r"\d\d:\d\d:\d\d \S", line) for line in log), out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("results in ")
    assert "nll_is" in out.stdout
    scores = json.loads((tmp_path / "quick" / "eval.json").read_text())
    assert f"{-scores['elbo']:.2f}" == quoted.group(1)
    assert f"{scores['nll_is']:.2f}" == quoted.group(2)
    assert scores["k"] == int(quoted.group(3)) and scores["active_units"] == int(quoted.group(4))


def test_on_a_terminal_log_lines_print_above_the_bar_not_through_it(tmp_path):
    """A training on a pseudo-terminal: the bar redraws its own line (carriage returns) and
    every log line (the setup, the validations, the test ELBO) starts a line of its own."""
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    # 40 rows × 120 columns, as a terminal window has (a bare pty has none)
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    args = [*TINY, "--config.train.num_epochs=6", "--config.eval.every_epochs=2"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config",
            "experiments/configs/digits_cvae.py",
        ]
        + args
        + ["--workdir", str(tmp_path / "run")],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "XLA_FLAGS": ""},
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed: the command has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=240) == 0, b"".join(chunks)[-2000:]
    # (a terminal turns each "\n" into "\r\n": undone, so that "\r" is the bar's own)
    screen = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    assert "train:" in screen and "\r" in screen  # a bar, redrawn in place
    # What a terminal shows: each physical line's text after its last carriage return.
    shown = [line.rsplit("\r", 1)[-1] for line in screen.split("\n")]
    for needle in ("devices:", "validation ELBO", "test ELBO"):
        lines = [line for line in shown if needle in line]
        assert lines, (needle, screen[-3000:])
        for line in lines:
            assert re.match(r"\d\d:\d\d:\d\d ", line) and "%|" not in line, line
    assert sum("validation ELBO" in line for line in shown) == 3


def test_evaluate_splits_a_cpu_host_into_a_device_per_core(monkeypatch):
    from experiments import cpu_cores

    monkeypatch.setenv("XLA_FLAGS", "")
    cpu_cores.split_host_into_cores()
    cores = len(os.sched_getaffinity(0))
    expected = f"--xla_force_host_platform_device_count={cores}" if cores > 1 else ""
    assert os.environ["XLA_FLAGS"] == expected
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    cpu_cores.split_host_into_cores()  # a count the user chose is kept
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"


def test_evaluate_on_other_devices_matches_the_logged_test_scores(tmp_path):
    """Training on 8 devices, experiments.evaluate on one device per core: the same
    numbers to float rounding (exactly equal only when the device counts match)."""
    result = training.train_and_evaluate(
        make_test_config(**{"train.num_devices": 0, "train.num_epochs": 1}), tmp_path
    )
    out = _cli("experiments.evaluate", "--workdir", str(tmp_path), "--k", "5")
    assert out.returncode == 0, out.stderr[-2000:]
    scores = json.loads((tmp_path / "eval.json").read_text())
    for name in ("elbo", "recon", "kl"):
        assert scores[name] == pytest.approx(result.final_metrics[name], rel=1e-5), name


@pytest.mark.parametrize(
    "path",
    sorted(
        p.name
        for p in (ROOT / "experiments" / "configs").glob("*.py")
        if p.name not in ("__init__.py", "common.py")
    ),
)
def test_every_shipped_config_validates(path):
    import importlib

    config = importlib.import_module(f"experiments.configs.{path[:-3]}").get_config()
    config_lib.validate(config)


def test_importing_a_launcher_leaves_the_importers_sigint_alone():
    """Only a launcher started as a program installs its quiet Ctrl-C handler."""
    script = (  # SIGINT's Python default first: a suite run in the background ignores it
        "import signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import experiments.train, benchmarks.training\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "from experiments import quiet_interrupts\n"
        "quiet_interrupts()\n"
        "assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]


def _console_script_modules() -> list[str]:
    """The launchers: every console script's module (pyproject.toml, [project.scripts])."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return sorted({target.split(":")[0] for target in scripts.values()})


def test_usage_lists_every_flag_of_every_launcher():
    """Each flag that a launcher's ``--help`` lists appears in docs/usage.md as ``--NAME``
    (its table of scripts, or the section the flag belongs to). About 10 s: one forked
    launcher per console script."""

    usage = (ROOT / "docs" / "usage.md").read_text()
    missing = {}
    for module in _console_script_modules():
        out = run_cli(module, "--help")
        assert out.returncode == 0, (module, out.stderr[-1000:])
        names = re.findall(r"^\s+--(?:\[no\])?([a-z0-9_]+):", out.stdout, re.MULTILINE)
        assert names, module
        absent = [n for n in names if not re.search(rf"--{n}(?![a-z0-9_])", usage)]
        if absent:
            missing[module] = absent
    assert not missing, f"flags missing from docs/usage.md: {missing}"
