import json
import logging

import jax
import numpy as np
import pytest

from cvae import Workdir, training
from cvae import config as config_lib
from cvae.runs import checkpoint, writers
from cvae.training import steps
from tests.helpers import make_test_config

pytestmark = pytest.mark.slow

DETERMINISTIC_KEYS = ("step", "epoch", "split", "loss", "elbo", "recon", "kl")


def _params(result):
    return jax.tree_util.tree_leaves(jax.device_get(result.state["params"]))


def _assert_bitwise_equal(a, b):
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_array_equal(x, y)


def _metrics(workdir):
    return [{k: r[k] for k in DETERMINISTIC_KEYS} for r in Workdir(workdir).read_metrics()]


def test_same_config_and_seed_give_identical_metrics_and_params(tmp_path):
    a = training.train_and_evaluate(make_test_config(), tmp_path / "a")
    b = training.train_and_evaluate(make_test_config(), tmp_path / "b")
    _assert_bitwise_equal(a, b)
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    c = training.train_and_evaluate(make_test_config(seed=1), tmp_path / "c")
    assert not np.array_equal(_params(a)[0], _params(c)[0])


def test_resumed_run_equals_uninterrupted_run_and_compiles_once(tmp_path):
    whole = training.train_and_evaluate(
        make_test_config(**{"train.num_epochs": 3}), tmp_path / "whole"
    )
    assert whole.traces["train_epoch"] == 1  # three epochs, one compilation
    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), tmp_path / "split")
    resumed = training.train_and_evaluate(
        make_test_config(**{"train.num_epochs": 3}), tmp_path / "split"
    )
    _assert_bitwise_equal(whole, resumed)
    assert int(resumed.state["step"]) == int(whole.state["step"]) == 3 * (1400 // 64)
    train_records = lambda d: [m for m in _metrics(d) if m["split"] != "test"]
    assert train_records(tmp_path / "whole") == train_records(tmp_path / "split")


def test_eight_devices_match_one_device_for_the_same_global_batch(tmp_path):
    assert len(jax.devices()) == 8
    one = training.train_and_evaluate(make_test_config(**{"train.num_devices": 1}), tmp_path / "1")
    eight = training.train_and_evaluate(
        make_test_config(**{"train.num_devices": 8}), tmp_path / "8"
    )
    for x, y in zip(_params(one), _params(eight), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


def test_absurd_learning_rate_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    good = training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), tmp_path)
    bad = make_test_config(**{"train.num_epochs": 3, "train.learning_rate": 1e30})
    with pytest.raises(training.TrainingDivergedError, match=r"step \d+ .*learning_rate"):
        training.train_and_evaluate(bad, tmp_path)
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == int(good.state["step"])
    params, meta = ckpt.restore_params("latest")
    assert checkpoint.all_finite(params) and meta["epoch"] == 1
    for x, y in zip(jax.tree_util.tree_leaves(params), _params(good), strict=True):
        np.testing.assert_array_equal(x, y)


def test_corrupted_latest_checkpoint_is_skipped_and_the_run_still_matches(tmp_path):
    whole = training.train_and_evaluate(
        make_test_config(**{"train.num_epochs": 3}), tmp_path / "whole"
    )
    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 2}), tmp_path / "torn")
    latest = tmp_path / "torn" / "checkpoints" / "latest"
    newest = max(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    for file in (latest / str(newest) / "state").rglob("*"):
        if file.is_file():
            file.write_bytes(b"\x00garbage")
    resumed = training.train_and_evaluate(
        make_test_config(**{"train.num_epochs": 3}), tmp_path / "torn"
    )
    assert (latest / f"corrupt-{newest}").is_dir()
    _assert_bitwise_equal(whole, resumed)


def test_resuming_with_a_different_model_is_refused_unless_overwriting(tmp_path):
    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), tmp_path)
    changed = make_test_config(**{"train.num_epochs": 1, "model.latent_dim": 3})
    with pytest.raises(training.ConfigMismatchError, match="model.latent_dim"):
        training.train_and_evaluate(changed, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["latent_dim"] == 4
    changed.train.overwrite = True
    result = training.train_and_evaluate(changed, tmp_path)
    assert result.state["params"]["encoder"]["mean"]["dense"]["kernel"].shape[-1] == 3


def test_workdir_holds_the_documented_files(tmp_path):
    training.train_and_evaluate(make_test_config(), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 0
    records = Workdir(tmp_path).read_metrics()
    assert {r["split"] for r in records} == {"train", "validation", "test"}
    for r in records:
        assert set(writers.METRIC_KEYS) <= set(r)
        assert all(np.isfinite(r[k]) for k in ("loss", "elbo", "recon", "kl"))
        assert r["elbo"] == pytest.approx(r["recon"] - r["kl"], abs=1e-3)
    assert any((tmp_path / "tb").glob("events.out.tfevents.*"))
    pngs = sorted(p.name for p in (tmp_path / "images").glob("*.png"))
    assert any(n.startswith("reconstructions") for n in pngs)
    assert any(n.startswith("samples") for n in pngs)
    assert (tmp_path / "checkpoints" / "latest").is_dir()
    assert (tmp_path / "checkpoints" / "best").is_dir()


@pytest.mark.parametrize(
    "overrides",
    [
        {"objective.kind": "iwae", "objective.k": 3, "model.posterior": "gaussian"},
        {"model.conditional": True, "data.class_balanced": True},
        {
            "model.likelihood": "gaussian",
            "data.binarize": "none",
            "data.dequantize": True,
            "model.posterior": "gaussian",
        },
        {"model.likelihood": "continuous_bernoulli", "data.binarize": "none"},
        {"model.posterior": "deterministic", "model.code_l2": 1.0},
        {"model.posterior": "deterministic", "model.code_l2": 1.0, "model.gradient_penalty": 0.1},
        {"objective.kind": "wae_mmd", "model.posterior": "deterministic"},
        {"objective.kind": "wae_mmd", "model.posterior": "collapsed", "model.sigma0": 0.1},
        {"model.prior": "vamp", "model.num_pseudo_inputs": 20, "model.posterior": "gaussian"},
        {
            "model.prior": "vamp",
            "model.num_pseudo_inputs": 20,
            "objective.kind": "iwae",
            "objective.k": 3,
        },
        {"model.arch": "conv", "model.conv_channels": (4, 8), "model.conv_dense_width": 16},
        {
            "model.dropout_rate": 0.2,
            "train.optimizer": "adamw",
            "train.weight_decay": 1e-4,
            "train.lr_schedule": "warmup_cosine",
            "train.lr_warmup_steps": 5,
            "train.grad_clip_norm": 1.0,
            "objective.kl_warmup_steps": 10,
            "objective.free_bits": 0.1,
        },
    ],
)
def test_every_option_trains_to_a_finite_improving_elbo(tmp_path, overrides):
    result = training.train_and_evaluate(make_test_config(**overrides), tmp_path)
    records = [r for r in Workdir(tmp_path).read_metrics() if r["split"] == "train"]
    assert np.isfinite(result.final_metrics["elbo"])
    assert records[-1]["elbo"] > records[0]["elbo"]


def test_a_conv_model_on_the_cpu_device_path_is_told_to_stream(caplog):
    """The on-device path scans a conv model's epoch, which XLA:CPU runs an order of
    magnitude slower: setting it up warns and names the fix; streamed, or an MLP, it does
    not."""
    from cvae.training.setup import setup

    conv = {"model.arch": "conv", "model.conv_channels": (4, 8), "model.conv_dense_width": 16}
    with caplog.at_level(logging.WARNING):
        setup(make_test_config(**conv))
    assert "data.pipeline=stream" in caplog.text
    for quiet in ({**conv, "data.pipeline": "stream"}, {}):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            setup(make_test_config(**quiet))
        assert "data.pipeline=stream" not in caplog.text


def test_early_stopping_stops_when_validation_stops_improving(tmp_path):
    # A learning rate of 1e-30 leaves every weight bit-identical (each Adam step moves a
    # parameter by at most the learning rate), and the validation key is fixed, so the
    # validation ELBO repeats exactly: no evaluation after the first improves. This holds
    # on any CPU, unlike a divergent learning rate whose path depends on the float maths.
    cfg = make_test_config(
        **{"train.num_epochs": 8, "train.early_stopping_patience": 2, "train.learning_rate": 1e-30}
    )
    result = training.train_and_evaluate(cfg, tmp_path)
    val = [r["elbo"] for r in Workdir(tmp_path).read_metrics() if r["split"] == "validation"]
    assert result.stopped_early and result.epoch == 3  # 1 improvement + 2 without
    assert val == [val[0]] * 3


def test_early_stopping_lets_an_improving_run_finish(tmp_path):
    # The first epochs of a fresh model improve the validation ELBO by whole nats.
    cfg = make_test_config(**{"train.num_epochs": 4, "train.early_stopping_patience": 1})
    result = training.train_and_evaluate(cfg, tmp_path)
    val = [r["elbo"] for r in Workdir(tmp_path).read_metrics() if r["split"] == "validation"]
    assert not result.stopped_early and result.epoch == 4
    assert all(later > earlier for earlier, later in zip(val, val[1:]))


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        ({"train.batch_size": 60, "train.num_devices": 8}, "multiple of the 8 devices"),
        ({"train.batch_size": 5000}, "exceeds the 1400 training examples"),
        ({"model.latent_dim": 0}, "model.latent_dim"),
        ({"objective.kind": "iwae", "model.posterior": "deterministic"}, "objective.kind"),
        ({"data.dequantize": True}, "data.dequantize"),
        ({"objective.kind": "wae_mmd", "model.posterior": "gaussian"}, "'wae_mmd'"),
        ({"objective.mmd_weight": -1.0}, "objective.mmd_weight"),
        ({"model.prior": "vamp", "model.posterior": "deterministic"}, "model.prior"),
        ({"model.prior": "vamp", "objective.free_bits": 0.5}, "objective.free_bits"),
        ({"model.gradient_penalty": 0.1}, "model.gradient_penalty = 0.1 is invalid.*deterministic"),
    ],
)
def test_bad_config_fails_before_training(tmp_path, overrides, pattern):
    with pytest.raises(config_lib.ConfigError, match=pattern):
        training.train_and_evaluate(make_test_config(**overrides), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_in_training_test_scores_equal_the_evaluation_core(tmp_path):
    """One evaluation core: the test ELBO logged by training is exactly what a separate
    evaluation of the saved params computes (same batches, same keys, same program)."""
    import cvae

    result = training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), tmp_path)
    run = cvae.load_run(tmp_path, which="latest")
    scores = run.evaluate("test", k=0)
    for name in ("elbo", "recon", "kl", "loss"):
        assert scores[name] == result.final_metrics[name], name
    logged = [r for r in Workdir(tmp_path).read_metrics() if r["split"] == "test"][-1]
    assert logged["elbo"] == scores["elbo"]


def test_without_a_validation_split_evaluations_are_labelled_train_eval(tmp_path):
    training.train_and_evaluate(make_test_config(**{"data.validation_size": 0}), tmp_path)
    splits = [r["split"] for r in Workdir(tmp_path).read_metrics()]
    assert splits == ["train", "train_eval", "train", "train_eval", "test"]


def test_learning_rate_and_beta_are_logged_with_each_epoch(tmp_path):
    cfg = make_test_config(
        **{
            "objective.kl_warmup_steps": 30,
            "train.lr_schedule": "warmup_cosine",
            "train.lr_warmup_steps": 5,
            "train.num_epochs": 3,
        }
    )
    training.train_and_evaluate(cfg, tmp_path)
    records = Workdir(tmp_path).read_metrics("train")
    total = 1400 // 64 * 3
    schedule = steps.learning_rate(cfg.train, total)
    for r in records:
        assert r["beta"] == pytest.approx(min(1.0, (r["step"] - 1) / 30))
        assert r["learning_rate"] == pytest.approx(float(schedule(r["step"] - 1)))
    assert records[0]["beta"] < records[-1]["beta"] == 1.0
    assert any(p.name.startswith("events") for p in (tmp_path / "tb").iterdir())


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.prior": "vamp", "model.num_pseudo_inputs": 20},
        {"objective.kind": "wae_mmd", "model.posterior": "collapsed", "model.sigma0": 0.1},
        {"model.posterior": "deterministic", "model.code_l2": 1.0, "model.gradient_penalty": 0.01},
        {
            "model.upper_latent_dims": (2,),
            "model.upper_widths": ((8,),),
            "model.upper_posteriors": ("gaussian",),
            "objective.free_bits": 0.1,
        },
        {
            "model.upper_latent_dims": (2,),
            "model.upper_widths": ((8,),),
            "model.inference": "top_down",
            "model.upper_posteriors": ("collapsed",),
            "model.upper_sigma0s": (0.1,),
            "objective.kind": "iwae",
            "objective.k": 3,
            "model.prior": "vamp",  # Tomczak & Welling's HVAE in miniature
            "model.num_pseudo_inputs": 10,
            "model.decoder_layers": "all",
            "model.activation": "gated",
        },
        {
            "model.upper_latent_dims": (2,),
            "model.upper_widths": ((8,),),
            "model.encoder_widths": (16,),
            "model.arch": "resnet",  # a residual top-down hierarchy on 4×4 and 2×2 grids
            "model.conv_channels": (8, 8),
            "model.inference": "top_down",
            "model.decoder_layers": "all",
            "model.upper_posteriors": ("collapsed",),
            "model.upper_sigma0s": (0.1,),
            "objective.free_bits": 0.1,
        },
        # a tokenizer: a collapsed code map, 4×4×2 on the 8×8 digits
        {"model.arch": "conv_map", "model.conv_channels": (8,), "model.code_channels": 2},
        {
            "model.arch": "resnet",  # groups of latent maps: two 4×4×1, two 2×2×1 on top
            "model.conv_channels": (8, 8),
            "model.groups_per_level": (2, 2),
            "model.code_channels": 1,
            "model.inference": "top_down",
            "model.decoder_layers": "all",
            "model.posterior": "gaussian",
            "model.upper_posteriors": ("collapsed", "gaussian", "gaussian"),
            "model.upper_sigma0s": (0.1, 0.1, 0.1),
            "objective.free_bits": 0.05,
            "objective.kl_balance": True,  # NVAE's balancing for the warm-up's 12 steps
            "objective.kl_warmup_steps": 12,
            "train.ema_decay": 0.9,
            "train.skip_grad_norm": 1e4,
            "data.train_split": "train[:640]",  # 9 steps an epoch: the conv epochs cost most
        },
    ],
    ids=[
        *("vamp", "wae_mmd", "rae_gp", "two_layers", "hvae_top_down_iwae", "residual_top_down"),
        *("code_map", "groups_of_maps"),
    ],
)
def test_neighbouring_models_resume_exactly_evaluate_and_sample(tmp_path, overrides):
    import cvae

    whole = training.train_and_evaluate(make_test_config(**overrides), tmp_path / "whole")
    training.train_and_evaluate(
        make_test_config(**overrides, **{"train.num_epochs": 1}), tmp_path / "split"
    )
    resumed = training.train_and_evaluate(make_test_config(**overrides), tmp_path / "split")
    _assert_bitwise_equal(whole, resumed)
    run = cvae.load_run(tmp_path / "whole")
    scores = run.evaluate("test", k=50)
    samples = run.sample(jax.random.key(0), 8, sampler="prior")
    assert samples.shape == (8, 8, 8, 1) and np.all(np.isfinite(samples))
    if "nll_is" in scores:  # a density: the K = 50 bound is tighter than the ELBO
        assert -scores["nll_is"] >= scores["elbo"] - 0.5


def test_training_reads_the_splits_the_config_names(tmp_path):
    """data.*_split pick the examples of each role; a run evaluates on the named split."""
    cfg = make_test_config(
        **{
            "data.validation_size": 0,
            "data.train_split": "train[:1000]",
            "data.validation_split": "train[1000:]",
            "data.test_split": "test[:100]",
            "train.num_epochs": 1,
        }
    )
    d = training.load_training_data(cfg, 1)
    assert (len(d.train_set), len(d.eval_set), len(d.test_set)) == (1000, 500, 100)
    assert d.eval_split == "validation"
    training.train_and_evaluate(cfg, tmp_path / "run")
    splits = [r["split"] for r in Workdir(tmp_path / "run").read_metrics()]
    assert splits == ["train", "validation", "test"]
    import cvae

    scored = cvae.load_run(tmp_path / "run").evaluate("test", k=2)
    assert scored["num_examples"] == 100


def test_a_start_that_failed_before_its_first_checkpoint_does_not_block_its_fix(tmp_path):
    """A start that failed (here: a data set that is not there) wrote config.json but no
    checkpoint: it is not a run, and the corrected command starts in the same workdir."""
    missing = make_test_config(**{"data.name": f"npz:{tmp_path / 'absent.npz'}"})
    with pytest.raises(ValueError, match="no such file"):
        training.train_and_evaluate(missing, tmp_path / "run")
    assert (tmp_path / "run" / "config.json").exists()
    fixed = training.train_and_evaluate(
        make_test_config(**{"train.num_epochs": 1}), tmp_path / "run"
    )
    assert fixed.epoch == 1 and not fixed.interrupted


def test_a_resume_that_changes_the_config_is_announced_recorded_and_reported(tmp_path, caplog):
    """Extending a run and changing its learning rate: one line says so, the history names
    the fields and the step, config.json holds what governs now, load_run and report show
    the history, and a rerun that changes nothing changes no file."""
    import cvae
    from experiments import report

    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), tmp_path)
    assert Workdir(tmp_path).read_config_history() == []
    changed = make_test_config(**{"train.num_epochs": 2, "train.learning_rate": 0.01})
    with caplog.at_level("WARNING", logger="cvae"):
        training.train_and_evaluate(changed, tmp_path)
    steps_per_epoch = 1400 // 64
    (line,) = [r.getMessage() for r in caplog.records if "changed config" in r.getMessage()]
    assert f"at step {steps_per_epoch} with a changed config: train.learning_rate" in line
    assert "train.learning_rate 0.001 → 0.01, train.num_epochs 1 → 2" in line
    (record,) = Workdir(tmp_path).read_config_history()
    assert record["step"] == steps_per_epoch and record["epoch"] == 1
    assert record["changes"] == {
        "train.learning_rate": [0.001, 0.01],
        "train.num_epochs": [1, 2],
    }
    assert "git_commit" in record["provenance"]
    saved = Workdir(tmp_path).read_config()
    assert saved.train.learning_rate == 0.01 and saved.train.num_epochs == 2
    assert cvae.load_run(tmp_path).config_history == [record]
    (reported,) = report.config_history_lines([tmp_path])
    assert reported == (
        f"Run {tmp_path.name} resumed at step {steps_per_epoch} with train.learning_rate "
        "0.001 → 0.01, train.num_epochs 1 → 2."
    )

    def files():
        return {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = files()
    training.train_and_evaluate(changed, tmp_path)
    assert files() == before


def test_skipped_updates_are_counted_warned_about_and_resume_exactly(tmp_path, caplog):
    """A threshold that skips some updates: the train records count them (with the mean
    gradient norm), a warning names the epochs that skip more than 5%, and the run resumes
    bit for bit; a threshold below every norm leaves the params at their initialisation."""
    training.train_and_evaluate(
        make_test_config(**{"train.num_epochs": 1, "train.skip_grad_norm": 1e9}), tmp_path / "p"
    )
    (first,) = Workdir(tmp_path / "p").read_metrics("train")
    assert first["skipped"] == 0 and first["grad_norm"] > 0
    # 1.2 × the first epoch's mean norm: a few of its steps skip, most of the second's
    skipping = {"train.skip_grad_norm": 1.2 * first["grad_norm"]}
    with caplog.at_level("WARNING", logger="cvae"):
        whole = training.train_and_evaluate(make_test_config(**skipping), tmp_path / "whole")
    records = Workdir(tmp_path / "whole").read_metrics("train")
    steps_per_epoch = 1400 // 64
    assert 0 < sum(r["skipped"] for r in records) < 2 * steps_per_epoch, records
    warned = sum("updates skipped" in r.getMessage() for r in caplog.records)
    assert warned == sum(r["skipped"] > 0.05 * steps_per_epoch for r in records) > 0
    training.train_and_evaluate(
        make_test_config(**skipping, **{"train.num_epochs": 1}), tmp_path / "split"
    )
    resumed = training.train_and_evaluate(make_test_config(**skipping), tmp_path / "split")
    _assert_bitwise_equal(whole, resumed)

    def untimed(workdir):
        timing = ("examples_per_s", "elapsed_s")
        return [{k: v for k, v in r.items() if k not in timing} for r in workdir.read_metrics()]

    assert untimed(Workdir(tmp_path / "split")) == untimed(Workdir(tmp_path / "whole"))

    frozen = training.train_and_evaluate(
        make_test_config(**{"train.num_epochs": 1, "train.skip_grad_norm": 1e-9}), tmp_path / "f"
    )
    initial = training.setup(make_test_config()).state["params"]
    for x, y in zip(
        jax.tree_util.tree_leaves(frozen.state["params"]),
        jax.tree_util.tree_leaves(initial),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


def test_a_run_with_a_weights_average_evaluates_and_saves_the_average_and_resumes_exactly(
    tmp_path,
):
    """train.ema_decay: the test record scores the average, load_run restores it (not the
    online weights), and a run stopped after one epoch resumes to the uninterrupted one."""
    import cvae

    averaged = {"train.ema_decay": 0.9}
    whole = training.train_and_evaluate(make_test_config(**averaged), tmp_path / "whole")
    assert set(whole.state) == {"step", "params", "online", "opt_state"}
    training.train_and_evaluate(
        make_test_config(**averaged, **{"train.num_epochs": 1}), tmp_path / "split"
    )
    resumed = training.train_and_evaluate(make_test_config(**averaged), tmp_path / "split")
    for name in ("params", "online"):
        for x, y in zip(
            jax.tree_util.tree_leaves(whole.state[name]),
            jax.tree_util.tree_leaves(resumed.state[name]),
            strict=True,
        ):
            np.testing.assert_array_equal(x, y)
    run = cvae.load_run(tmp_path / "whole", which="latest")
    leaves = jax.tree_util.tree_leaves
    for x, y in zip(leaves(run.params), leaves(whole.state["params"]), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(
        np.array_equal(x, y)
        for x, y in zip(leaves(whole.state["params"]), leaves(whole.state["online"]), strict=True)
    )
    assert run.evaluate("test", k=0)["elbo"] == whole.final_metrics["elbo"]


@pytest.mark.parametrize(
    "change",
    [{"train.ema_decay": 0.9}, {"train.grad_clip_norm": 1.0}, {"train.optimizer": "adamw"}],
)
def test_a_resume_that_would_change_what_a_checkpoint_holds_is_refused(tmp_path, change):
    """An average of the weights, clipping or another optimizer change the state's
    structure: the saved checkpoints could not be restored into it, so the rerun is
    refused in one message and the checkpoints stay as they were."""
    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), tmp_path)
    saved = sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir())
    with pytest.raises(training.ConfigMismatchError, match=next(iter(change))):
        training.train_and_evaluate(make_test_config(**change), tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir()) == saved
