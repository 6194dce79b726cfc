"""Every user mistake gets one line saying what is wrong, exit status 2, no traceback — on
the command line — and a plain ValueError from the Python API. Keep adding."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import cvae
from cvae import training
from tests.helpers import ROOT, make_test_config, run_cli

pytestmark = pytest.mark.slow

CONFIG = ["--config", "experiments/configs/digits_cvae.py", "--workdir", "W"]
BAD_CONFIG_FILES = {
    "SYNTAX": "def get_config(:\n    pass\n",
    "NOGET": "X = 1\n",
    "RAISES": "def get_config():\n    raise RuntimeError('boom')\n",
    "NOTCONFIG": "def get_config():\n    return 5\n",
}


_cli = run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), workdir)
    return workdir


@pytest.mark.parametrize(
    "args,pattern",
    [
        # config fields and values
        (
            ["experiments.train", *CONFIG, "--config.model.latnt_dim=3"],
            "unknown config field 'model.latnt_dim'; did you mean 'model.latent_dim'?",
        ),
        (["experiments.train", *CONFIG, "--config.nosuch.x=1"], "unknown config field 'nosuch.x'"),
        (["experiments.train", *CONFIG, "--config.model.sigma0=inf"], "model.sigma0 = inf"),
        (
            ["experiments.train", *CONFIG, "--config.train.learning_rate=inf"],
            "train.learning_rate = inf",
        ),
        (["experiments.train", *CONFIG, "--config.objective.beta=-1"], "objective.beta"),
        (["experiments.train", *CONFIG, "--config.train.ema_decay=1"], "train.ema_decay = 1.0"),
        (
            ["experiments.train", *CONFIG, "--config.train.skip_grad_norm=-1"],
            "train.skip_grad_norm = -1.0 is invalid: it must be finite and ≥ 0.0 (0: no skipping)",
        ),
        (
            ["experiments.train", *CONFIG, "--config.train.precision=fp8"],
            "train.precision = 'fp8' is invalid",
        ),
        (
            ["experiments.train", *CONFIG, "--config.model.groups_per_level=(2,2,2)"],
            "model.groups_per_level",
        ),
        (
            ["experiments.train", *CONFIG, "--config.model.arch=conv", "--config.model.init=torch"],
            "model.init",
        ),
        # config files
        (["experiments.train", "--config", "SYNTAX", "--workdir", "W"], "(line 1): SyntaxError"),
        (["experiments.train", "--config", "NOGET", "--workdir", "W"], "no attribute 'get_config'"),
        (["experiments.train", "--config", "RAISES", "--workdir", "W"], "RuntimeError: boom"),
        (
            ["experiments.train", "--config", "NOTCONFIG", "--workdir", "W"],
            "must be an ml_collections.ConfigDict, got int",
        ),
        # data
        (["experiments.train", *CONFIG, "--config.data.name=mnsit"], "did you mean 'mnist'"),
        (["experiments.train", *CONFIG, "--config.data.name=npz:GARBAGE"], "could not be read"),
        (["experiments.train", *CONFIG, "--config.data.name=npz:NOFILE"], "no such file"),
        (
            ["experiments.train", *CONFIG, "--config.data.test_split=validation"],
            "data set 'digits': cannot read split 'validation'",
        ),
        (
            ["experiments.train", *CONFIG, "--config.data.center_crop=9"],
            "data.center_crop = 9 is larger than the 8×8 images",
        ),
        (
            ["experiments.train", *CONFIG, "--config.data.validation_split=test"],
            "data.validation_split = 'test' is invalid",
        ),
        # script flags
        (["experiments.evaluate", "--workdir", "RUN", "--batch_size", "0"], "--batch_size must"),
        (["experiments.evaluate", "--workdir", "RUN", "--batch_size=-5"], "--batch_size must"),
        (["experiments.evaluate", "--workdir", "RUN", "--chunk_size=-1"], "--chunk_size must"),
        (["experiments.sample", "--workdir", "RUN", "--out", "DIR"], "is a directory"),
        (["experiments.sample", "--workdir", "RUN", "--out", "grid.jpg"], "must end in .png"),
        (["experiments.sample", "--workdir", "RUN", "--n", "-1"], "--n must be ≥ 1"),
        (
            ["experiments.sample", "--workdir", "RUN", "--n", "5000000000"],
            "images needs about 5120.0 GB of host memory",
        ),
        (["experiments.evaluate", "--workdir", "RUN", "--nosuchflag=1"], "nosuchflag"),
        # the mistakes of a first day: each says what to type instead
        (
            ["experiments.train", *CONFIG, "--epochs", "3"],
            "unknown flag --epochs; did you mean --config.train.num_epochs?",
        ),
        (["experiments.evaluate", "--workdri", "RUN"], "did you mean --workdir?"),
        (
            ["experiments.train", *CONFIG, "--config.train.num_epochs=three"],
            "--config.train.num_epochs takes an integer, got 'three'",
        ),
        (
            ["experiments.train", *CONFIG, "--config.train.learning_rate=fast"],
            "--config.train.learning_rate takes a number, got 'fast'",
        ),
        (
            ["experiments.train", *CONFIG, "--config.train.overwrite=yes"],
            "--config.train.overwrite takes true or false, got 'yes'",
        ),
        (
            ["experiments.train", "--config", "experiments/configs", "--workdir", "W"],
            "experiments/configs is a directory, and a file is needed there: --config takes "
            "a config file, e.g. experiments/configs/digits_cvae.py",
        ),
        (
            ["experiments.train", "--config", CONFIG[1], "--workdir", "AFILE"],
            "is a file, and a directory is needed there",
        ),
        (
            ["experiments.sweep", *CONFIG, "--seeds", "3"],
            "--seeds 3 is ambiguous: write --seeds 0:3 for 3 seeds (0 to 2) or --seeds 3:4",
        ),
        # a latent diffusion run
        (["experiments.train_latent", "--workdir", "W"], "--tokenizer is required"),
        (
            ["experiments.train_latent", "--tokenizer", "RUN", "--config.widht=3"],
            "unknown config field 'widht'; did you mean 'width'? (--helpconfig lists every "
            "field; they are defined in cvae/training/latent.py)",
        ),
        (
            ["experiments.train_latent", "--tokenizer", "RUN", "--workdir", "W"],
            "is not a tokenizer: its code is a vector, not a map",
        ),
        (
            ["experiments.train_latent", "--tokenizer", "RUN", "--config.width=30"],
            "width 30 must be a multiple of 4",
        ),
        (
            ["experiments.train_latent", "--tokenizer", "RUN", "--config.warmup_steps=30000"],
            "config.warmup_steps (30000) must be below config.num_steps (20000)",
        ),
        (
            ["experiments.sample", "--workdir", "RUN", "--sampler", "latent_diffusion"],
            "holds no latent diffusion run; train one with experiments.train_latent",
        ),
        (
            ["experiments.sample", "--workdir", "RUN", "--sampler", "gmm@tpo2"],
            "--sampler gmm@tpo2: choose from prior, gmm, flow, two_stage, diffusion, "
            "latent_diffusion, or KIND@top / KIND@topN (a hierarchy's top layers)",
        ),
        (
            ["experiments.sample", "--workdir", "RUN", "--sampler", "gmm@top2"],
            "needs a hierarchy (model.upper_latent_dims); this run has one stochastic "
            "layer: use 'gmm'",
        ),
    ],
)
def test_bad_use_is_one_line_status_2_and_no_traceback(args, pattern, tmp_path, run_dir):
    places = {
        "W": str(tmp_path / "w"),
        "RUN": str(run_dir),
        "DIR": str(tmp_path),
        "GARBAGE": str(tmp_path / "garbage.npz"),
        "NOFILE": str(tmp_path / "none.npz"),
        "AFILE": str(tmp_path / "garbage.npz"),
    }
    (tmp_path / "garbage.npz").write_bytes(b"this is not an npz archive")
    for name, text in BAD_CONFIG_FILES.items():
        (tmp_path / f"{name.lower()}.py").write_text(text)
        places[name] = str(tmp_path / f"{name.lower()}.py")

    def place(arg):
        prefix, npz, name = arg.partition("npz:")
        return prefix + npz + places[name] if npz and name in places else places.get(arg, arg)

    out = _cli(*[place(a) for a in args])
    assert out.returncode == 2, (out.stdout, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], lines
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "script, field",
    [
        ("experiments.train", "--config.model.latent_dim=16"),
        ("experiments.evaluate", "--config.model.latent_dim=16"),
        ("experiments.train_latent", "--config.width=128  # the tokens' width"),
    ],
)
def test_help_exits_0_and_config_fields_are_listed(script, field):
    out = _cli(script, "--help")
    assert out.returncode == 0 and "--workdir" in out.stdout
    fields = _cli(script, "--helpconfig")
    assert fields.returncode == 0 and field in fields.stdout


def _popen_with_sigint_handled(args, **kwargs):
    # A suite started in the background (`nohup make test &`) runs with SIGINT ignored, which
    # children inherit, and Python then keeps ignoring it, as a background job should. A
    # handled signal is reset to the default on exec: the script starts as from a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("delay_s", [0.2, 2.0])
def test_ctrl_c_during_start_up_is_quiet(tmp_path, delay_s):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    proc = _popen_with_sigint_handled(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config",
            "experiments/configs/digits_cvae.py",
            "--workdir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-2000:]
    # Both paths exit 130; which one ran depends on how fast start-up was (a warm
    # compilation cache reaches the loop within 2 s), so the message tells them apart.
    assert proc.returncode == 130, err[-2000:]
    if "SIGINT received" in err:  # inside the loop: the epoch finished, a save, a clean stop
        assert "saved step" in err and "rerun the same command to resume" in err, err[-2000:]
    else:  # before the training loop: nothing trained, one line
        assert "interrupted (Ctrl-C) before anything was saved" in err, err[-2000:]
    assert not (tmp_path / ".lock").exists()


# ---------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def run(run_dir):
    return cvae.load_run(run_dir)


@pytest.mark.parametrize(
    "make_input,pattern",
    [
        (lambda x: x * 255.0, r"must lie in \[0, 1\].*look like 0–255 pixels"),
        (lambda x: (x * 255).astype(np.int64), "dtype int64 are not accepted"),
        (lambda x: x - 0.5, r"must lie in \[0, 1\]"),
        (lambda x: np.where(x > 0.5, np.nan, x), "NaN"),
        (lambda x: x[..., 0], "does not match the model's images"),
    ],
)
def test_encode_refuses_inputs_it_was_not_trained_on(run, make_input, pattern):
    x = cvae.data.evaluation_inputs(cvae.data.load("digits", "test"), True)[:4]
    run.encode(x)  # the right input works
    with pytest.raises(ValueError, match=pattern):
        run.encode(make_input(x))


def test_uint8_images_are_scaled_the_documented_way(run):
    test = cvae.data.load("digits", "test")
    as_uint8 = test.images[:4]
    as_float = as_uint8.astype(np.float32) / 255.0
    np.testing.assert_allclose(run.encode(as_uint8)[0], run.encode(as_float)[0], atol=1e-6)


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda run: run.sample(jax.random.key(0), -1), "positive integer"),
        (lambda run: run.sample(jax.random.key(0), 0), "positive integer"),
        (lambda run: run.sample(jax.random.key(0), 2.5), "positive integer"),
        (lambda run: run.sample(jax.random.key(0), 4, sampler="flowz"), "sampler must be one of"),
        (lambda run: run.decode(np.zeros((3, 7))), r"latents must be shaped N×4"),
        (lambda run: run.decode(np.full((3, 4), np.inf)), "NaN or infinite"),
        (
            lambda run: run.interpolate(np.zeros((8, 8, 1)), np.zeros((8, 8, 1)), steps=1),
            "steps must be an integer ≥ 2",
        ),
        (lambda run: run.evaluate("test", k=-3), "K must be ≥ 0"),
        (lambda run: cvae.load_run(run.workdir, which="newest"), "which must be one of"),
        (lambda run: run.encode(np.zeros((2, 8, 8, 1), np.float32), labels=3), "unconditional"),
    ],
)
def test_api_misuse_raises_a_plain_value_error(run, call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(run)


def test_an_int_seed_is_a_key_and_one_image_is_a_batch_of_one(run):
    x = cvae.data.evaluation_inputs(cvae.data.load("digits", "test"), True)[:2]
    np.testing.assert_array_equal(run.sample(3, 4), run.sample(jax.random.key(3), 4))
    np.testing.assert_array_equal(run.reconstruct(x, 5), run.reconstruct(x, jax.random.key(5)))
    np.testing.assert_array_equal(run.encode(x[0])[0], run.encode(x[:1])[0])
    path = run.interpolate(x[0], x[1], steps=3)
    assert path.shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(path, run.interpolate(x[:1], x[1:2], steps=3))
    with pytest.raises(TypeError, match=r"jax.random.key\(0\), or an int seed"):
        run.sample("0", 4)


def test_the_model_names_a_missing_batch_axis(run):
    x = cvae.data.evaluation_inputs(cvae.data.load("digits", "test"), True)[:1]
    with pytest.raises(ValueError, match=r"without a batch axis.*x\[None\]"):
        run.model.apply({"params": run.params}, x[0], method=run.model.encode)


def test_per_example_scores_rank_examples_and_average_to_the_splits_scores(run):
    """The per-example ELBO averages to evaluate's (same images, other posterior draws:
    close, not equal), and log p̂(x) ≥ ELBO holds on average (Jensen)."""
    x, _ = run.inputs("test")
    scores = run.scores(x, k=50)
    assert {k: v.shape for k, v in scores.items()} == {
        name: (len(x),) for name in ("elbo", "recon", "kl", "log_px")
    }
    np.testing.assert_allclose(scores["elbo"], scores["recon"] - scores["kl"], rtol=1e-6)
    assert np.mean(scores["log_px"]) >= np.mean(scores["elbo"])
    split = run.evaluate("test", k=0)
    assert abs(np.mean(scores["elbo"]) - split["elbo"]) < 0.02 * abs(split["elbo"])
    with pytest.raises(ValueError, match="k must be an integer"):
        run.scores(x, k=-1)


def test_out_of_memory_is_one_line_saying_what_to_lower():
    """XLA's RESOURCE_EXHAUSTED (here a real one: 4 TB asked of the CPU) becomes the line a
    launcher prints, naming the allocation and the flags that size it; other errors none."""
    import jax
    import jax.numpy as jnp

    from experiments import cli

    with pytest.raises(Exception) as error:
        jax.jit(lambda: jnp.ones((2**40,), jnp.float32))().block_until_ready()
    message = cli.out_of_memory(error.value)
    assert message.startswith("out of memory (Out of memory allocating 4398046511104 bytes)")
    assert "lower --n, --k, --batch_size or --chunk_size" in message and "\n" not in message
    assert cli.out_of_memory(ValueError("something else")) == ""
