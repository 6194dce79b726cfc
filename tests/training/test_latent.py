"""A latent diffusion run (``cvae.training.latent``) on a digits tokenizer (4×4×2 code maps):
exact resume, the same samples from the same seed, the normaliser computed once and reused,
a changed tokenizer refused in one line, the pixel baseline at the same tokens, labels."""

import json
import shutil

import jax
import numpy as np
import pytest

import cvae
from cvae import training
from cvae.runs.workdir import Workdir
from cvae.training import latent
from tests.helpers import make_test_config, run_cli

pytestmark = pytest.mark.slow

TOKENIZER = {"model.arch": "conv_map", "model.conv_channels": (8,), "model.code_channels": 2}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tokenizer")
    training.train_and_evaluate(make_test_config(**TOKENIZER), workdir)
    return workdir


def _config(**fields):
    c = latent.latent_config()
    c.update(
        {
            "width": 32,
            "depth": 1,
            "heads": 2,
            "batch_size": 32,
            "num_steps": 40,
            "steps_per_call": 10,
            "checkpoint_every": 10,
            "warmup_steps": 5,
            "sampling_steps": 4,
            **fields,
        }
    )
    return c


def _leaves(workdir):
    ckpt = cvae.runs.checkpoint.Checkpointer(Workdir(workdir).checkpoints)
    params, _ = ckpt.restore_params("latest")
    ckpt.close()
    return jax.tree_util.tree_leaves(params)


def test_a_killed_latent_run_resumes_to_the_uninterrupted_run_and_samples_the_same(
    tokenizer, tmp_path
):
    """40 steps at once, and the launcher SIGKILLed at its third checkpoint (step 30, the
    one at 20 intact) then rerun: the same EMA weights bit for bit, the same records, the
    same samples from the same key (other keys, other samples). Both in launcher processes:
    one CPU device, as a user runs it (the suite's own process has eight)."""
    flags = [f"--config.{name}={value}" for name, value in _config().items()]
    command = ["experiments.train_latent", "--tokenizer", str(tokenizer), *flags]
    whole = run_cli(*command, "--workdir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    # Off a terminal: no bar, the encoding announced, about ten step lines.
    assert "encoding the 1500 training images with the tokenizer" in whole.stderr
    assert "%|" not in whole.stderr
    assert 1 <= whole.stderr.count("latent DiT step") <= 11, whole.stderr
    killed = run_cli(
        *command, "--workdir", str(tmp_path / "split"), env={"CVAE_FAULT": "checkpoint_save:3"}
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli(*command, "--workdir", str(tmp_path / "split"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step 20" in resumed.stderr
    assert (
        whole.stdout.splitlines()[-1].replace("whole", "split") == resumed.stdout.splitlines()[-1]
    )
    for a, b in zip(_leaves(tmp_path / "whole"), _leaves(tmp_path / "split"), strict=True):
        np.testing.assert_array_equal(a, b)
    records = [Workdir(tmp_path / d).read_metrics() for d in ("whole", "split")]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]] == [10, 20, 30, 40]
    assert [r["loss"] for r in records[0]] == [r["loss"] for r in records[1]]

    run = cvae.load_run(tokenizer)
    first = run.latent_diffusion(tmp_path / "whole").sample(jax.random.key(3), 6)
    again = run.latent_diffusion(tmp_path / "split").sample(jax.random.key(3), 6)
    assert first.shape == (6, 4, 4, 2)
    np.testing.assert_array_equal(first, again)
    other = run.latent_diffusion(tmp_path / "whole").sample(jax.random.key(4), 6)
    assert not np.allclose(first, other)


def test_the_normaliser_is_the_codes_per_channel_moments_stored_once_and_used(tokenizer, tmp_path):
    """shift_c = mean μ_c and scale_c² = Var μ_c + σ₀² over the training split's codes, written
    to latent.json at the first start; sampling reads it from there (doubling the stored
    scale doubles every code's distance from the shift)."""
    latent.train_latent(_config(num_steps=10), tokenizer, tmp_path / "run", progress=False)
    record = json.loads((tmp_path / "run" / latent.RECORD).read_text())
    run = cvae.load_run(tokenizer)
    codes, _ = run.training_codes()
    per_channel = codes.reshape(-1, 2)  # (N·h·w, c)
    np.testing.assert_allclose(record["normaliser"]["shift"], per_channel.mean(0), rtol=1e-4)
    spread = np.sqrt(per_channel.var(0) + 0.01**2)
    np.testing.assert_allclose(record["normaliser"]["scale"], spread, rtol=1e-4)
    assert record["tokenizer"]["params_sha256"] == run.params_sha256
    assert record["tokens"] == 16 and record["patch"] == 1

    drawn = latent.load_latent(tmp_path / "run").sample(jax.random.key(0), 4)
    record["normaliser"]["scale"] = [2 * s for s in record["normaliser"]["scale"]]
    (tmp_path / "run" / latent.RECORD).write_text(json.dumps(record))
    doubled = latent.load_latent(tmp_path / "run").sample(jax.random.key(0), 4)
    shift = np.asarray(record["normaliser"]["shift"])
    np.testing.assert_allclose(doubled - shift, 2 * (drawn - shift), rtol=1e-5, atol=1e-6)
    # a rerun to more steps keeps the stored normaliser, whatever it says
    latent.train_latent(_config(num_steps=20), tokenizer, tmp_path / "run", progress=False)
    kept = json.loads((tmp_path / "run" / latent.RECORD).read_text())
    assert kept["normaliser"] == record["normaliser"]


def test_a_tokenizer_trained_further_is_refused_in_one_line(tokenizer, tmp_path):
    """A latent run names its tokenizer's parameters: after the tokenizer trains on, a rerun
    of the latent run and sampling it through the tokenizer are refused, naming the fix."""
    moved = tmp_path / "tokenizer"
    shutil.copytree(tokenizer, moved)
    latent.train_latent(_config(num_steps=10), moved, progress=False)
    training.train_and_evaluate(make_test_config(**TOKENIZER, **{"train.num_epochs": 3}), moved)
    with pytest.raises(latent.LatentRunError, match=r"whose parameters have changed since") as e:
        latent.train_latent(_config(num_steps=20), moved, progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(latent.LatentRunError, match=r"trained on other parameters.*retrain"):
        cvae.load_run(moved).sample(0, 4, "latent_diffusion")


def test_the_pixel_baseline_has_the_latent_models_tokens_and_draws_images(tokenizer, tmp_path):
    """space=pixels: the 8×8 images in patches of 2 are the 4×4 code map's 16 tokens; the
    samples are images in [0, 1]."""
    latent.train_latent(
        _config(space="pixels", num_steps=10), tokenizer, tmp_path / "px", progress=False
    )
    record = json.loads((tmp_path / "px" / latent.RECORD).read_text())
    assert record["tokens"] == 16 and record["patch"] == 2 and record["shape"] == [8, 8, 1]
    images = cvae.load_run(tokenizer).latent_diffusion(tmp_path / "px").sample(0, 5)
    assert images.shape == (5, 8, 8, 1)
    assert float(np.min(images)) >= 0.0 and float(np.max(images)) <= 1.0


def test_a_conditional_latent_run_takes_labels_and_an_unconditional_one_refuses_them(
    tokenizer, tmp_path
):
    latent.train_latent(
        _config(conditional=True, num_steps=10), tokenizer, tmp_path / "c", progress=False
    )
    run = cvae.load_run(tokenizer)
    diffusion = run.latent_diffusion(tmp_path / "c")
    assert diffusion.module.num_classes == 10
    labelled = diffusion.sample(jax.random.key(0), 4, labels=[1, 2, 3, 4], guidance=1.0)
    unguided = diffusion.sample(jax.random.key(0), 4, labels=[1, 2, 3, 4])
    assert labelled.shape == (4, 4, 4, 2) and not np.array_equal(labelled, unguided)
    latent.train_latent(_config(num_steps=10), tokenizer, tmp_path / "u", progress=False)
    with pytest.raises(ValueError, match="trained without labels"):
        run.latent_diffusion(tmp_path / "u").sample(0, 4, labels=[1, 2, 3, 4])


def test_sample_quality_scores_a_latent_run_into_its_own_file(tokenizer, tmp_path):
    """``experiments.sample_quality --workdir LATENT_DIR``: the DiT's samples, decoded by its
    tokenizer, scored against the test images, written beside the latent run; the
    tokenizer's report row carries them."""
    from cvae.analysis import compare

    shutil.copytree(tokenizer, tmp_path / "tokenizer")
    latent.train_latent(_config(num_steps=10), tmp_path / "tokenizer", progress=False)
    latent_dir = tmp_path / "tokenizer" / latent.DEFAULT_DIR
    clf = run_cli(
        "experiments.train_classifier", "--workdir", str(tmp_path / "clf"), "--dataset", "digits"
    )
    assert clf.returncode == 0, clf.stderr[-2000:]
    out = run_cli(
        "experiments.sample_quality",
        *["--workdir", str(latent_dir), "--classifier", str(tmp_path / "clf")],
        *["--n", "200"],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((latent_dir / "sample_quality.json").read_text())
    assert result["fid_latent_diffusion"] > 0 and result["n"] == 200
    assert 0 <= result["recall_latent_diffusion"] <= 1
    assert not (tmp_path / "tokenizer" / "sample_quality.json").exists()
    row = compare.run_summary(tmp_path / "tokenizer")
    assert row["fid_latent_diffusion"] == result["fid_latent_diffusion"]
    assert row["latent_dim"] == "map ×2"
