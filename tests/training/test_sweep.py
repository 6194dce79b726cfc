"""Sweeps: a population trains in one program and each member equals its run
alone; kills and signals resume to the uninterrupted sweep; a diverging member fails
alone; members shard over a ``member`` mesh axis; shards of an array job share one
directory; bad grids fail in one line."""

import json
import logging

import jax
import numpy as np
import pytest

import cvae
from cvae import training
from cvae.runs.workdir import Workdir
from cvae.training import population, sweep
from experiments import report
from tests import launcher
from tests.helpers import make_test_config, run_cli

pytestmark = pytest.mark.slow

DETERMINISTIC = ("step", "epoch", "split", "loss", "elbo", "recon", "kl")
SMALL = {
    "model.encoder_widths": "(32,16)",
    "model.latent_dim": 4,
    "train.batch_size": 64,
    "train.num_epochs": 3,
    "data.validation_size": 100,
    "train.image_grid_size": 0,
    "train.num_devices": 1,
    "train.checkpoint_every_epochs": 1,
    "train.keep_checkpoints": 2,
}


def _leaves(tree):
    return jax.tree_util.tree_leaves(jax.device_get(tree))


def _member_params(result, i):
    return _leaves(jax.tree_util.tree_map(lambda x: x[i], result.state["params"]))


def _records(workdir):
    return [{k: r[k] for k in DETERMINISTIC if k in r} for r in Workdir(workdir).read_metrics()]


def _assert_records_close(a, b, rtol):
    assert [(r["split"], r["step"]) for r in a] == [(r["split"], r["step"]) for r in b]
    for x, y in zip(a, b):
        for key in ("loss", "elbo", "recon", "kl"):
            np.testing.assert_allclose(x[key], y[key], rtol=rtol, err_msg=f"{x['split']} {key}")


def test_each_member_equals_its_run_alone_and_the_population_compiles_once(tmp_path, caplog):
    schedule = {
        "train.optimizer": "adamw",
        "train.weight_decay": 1e-4,
        "train.lr_schedule": "warmup_cosine",
        "train.lr_warmup_steps": 10,
    }
    configs = [
        make_test_config(seed=s, **schedule, **{"model.sigma0": v, "train.learning_rate": lr})
        for s, v, lr in ((0, 0.01, 1e-3), (1, 0.1, 1e-3), (2, 0.01, 3e-3), (3, 1.0, 1e-3))
    ]
    with caplog.at_level(logging.INFO, logger="cvae"):
        result = population.train_population(configs, [tmp_path / f"m{i}" for i in range(4)])
    assert result.traces["train_epoch"] == 1
    # each member's validation line names the member
    validation = [r.getMessage() for r in caplog.records if "validation ELBO" in r.getMessage()]
    assert validation and {line.split(":")[0] for line in validation} == {"m0", "m1", "m2", "m3"}
    assert [o.status for o in result.outcomes] == ["done"] * 4
    for i, cfg in enumerate(configs):
        alone = training.train_and_evaluate(cfg, tmp_path / f"alone{i}")
        for x, y in zip(_member_params(result, i), _leaves(alone.state["params"]), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        _assert_records_close(
            _records(tmp_path / f"m{i}"), _records(tmp_path / f"alone{i}"), rtol=1e-5
        )
    # A member's directory is an ordinary run.
    run = cvae.load_run(tmp_path / "m1")
    assert run.config.model.sigma0 == 0.1 and run.config.seed == 1
    assert np.isfinite(run.evaluate("test", k=5)["nll_is"])


def test_two_layer_members_with_their_own_per_layer_sigma0_and_beta_train_as_alone(tmp_path):
    """Each layer's σ₀ and β are traced hyperparameters: members of one compiled program
    differ in the bottom and the top layer's σ₀ and in the top layer's β, and each trains
    what its run alone trains."""
    two_layers = {
        "model.upper_latent_dims": (2,),
        "model.upper_widths": ((8,),),
        "train.num_epochs": 1,
    }
    configs = [
        make_test_config(
            **two_layers,
            **{"model.sigma0": s1, "model.upper_sigma0s": (s2,), "objective.upper_betas": (b,)},
        )
        for s1, s2, b in ((0.01, 0.5, 1.0), (0.3, 0.05, 3.0))
    ]
    result = population.train_population(configs, [tmp_path / f"m{i}" for i in range(2)])
    assert result.traces["train_epoch"] == 1
    for i, cfg in enumerate(configs):
        alone = training.train_and_evaluate(cfg, tmp_path / f"alone{i}")
        for x, y in zip(_member_params(result, i), _leaves(alone.state["params"]), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        _assert_records_close(
            _records(tmp_path / f"m{i}"), _records(tmp_path / f"alone{i}"), rtol=1e-5
        )
    assert not np.allclose(*(_member_params(result, i)[0] for i in range(2)))


def test_members_shard_over_a_member_axis_with_the_same_numbers(tmp_path):
    assert len(jax.devices()) == 8
    configs = lambda devices: [
        make_test_config(
            seed=s,
            **{"train.num_devices": devices, "train.num_epochs": 1, "model.sigma0": 0.01 * (s + 1)},
        )
        for s in range(8)
    ]
    one = population.train_population(configs(1), [tmp_path / f"a{i}" for i in range(8)])
    eight = population.train_population(configs(0), [tmp_path / f"b{i}" for i in range(8)])
    assert eight.state["step"].sharding.mesh.shape["member"] == 8
    for i in range(8):
        for x, y in zip(_member_params(eight, i), _member_params(one, i), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_a_diverging_member_fails_alone_and_keeps_its_last_good_checkpoint(tmp_path):
    # β = 3e38 warmed up over 500 steps: β_t · KL overflows float32 in epoch 2 (step ≥ 21).
    base = make_test_config(**{"train.num_epochs": 3, "objective.kl_warmup_steps": 500})
    outcomes = sweep.run_sweep(base, tmp_path, seeds=[0], grid={"objective.beta": [1.0, 3e38]})
    good, bad = outcomes["beta=1/seed=0"], outcomes["beta=3e+38/seed=0"]
    assert good.status == "done" and np.isfinite(good.final_metrics["elbo"])
    assert bad.status == "failed" and bad.epoch == 1
    entry = json.loads((tmp_path / "sweep.json").read_text())["members"]["beta=3e+38/seed=0"]
    assert entry["status"] == "failed" and "(epoch 2)" in entry["error"]
    assert "the last checkpoint (step 21) is intact" in entry["error"]
    frozen = cvae.load_run(tmp_path / "beta=3e+38/seed=0", "latest")
    assert frozen.meta["epoch"] == 1
    assert all(np.all(np.isfinite(p)) for p in _leaves(frozen.params))
    # Reports aggregate the finished members and say which were left out.
    workdirs, notes = report.expand_sweeps([tmp_path])
    assert workdirs == [tmp_path / "beta=1/seed=0"]
    assert notes == [f"{tmp_path}: left out 1 failed member(s): beta=3e+38/seed=0"]
    # The good member finished exactly as its run alone does.
    training.train_and_evaluate(base, tmp_path / "alone")
    _assert_records_close(
        _records(tmp_path / "beta=1/seed=0"), _records(tmp_path / "alone"), rtol=1e-5
    )


def test_a_diverging_member_ends_its_epoch_with_the_state_it_began_it_with(tmp_path):
    """The population restores a member whose loss turned non-finite to its state from
    before that epoch — its last checkpoint — while the other member trains on."""
    short = {"train.num_epochs": 2, "objective.kl_warmup_steps": 500}  # checkpoints every epoch
    base = make_test_config(**short)
    diverging = make_test_config(**short, **{"objective.beta": 3e38})
    result = population.train_population([base, diverging], [tmp_path / "good", tmp_path / "bad"])
    assert [o.status for o in result.outcomes] == ["done", "failed"]
    assert int(result.state["step"][1]) == 21 and int(result.state["step"][0]) == 42
    checkpointed = cvae.load_run(tmp_path / "bad", "latest")
    for x, y in zip(_member_params(result, 1), _leaves(checkpointed.params), strict=True):
        np.testing.assert_array_equal(x, y)
    finished = cvae.load_run(tmp_path / "good", "latest")
    for x, y in zip(_member_params(result, 0), _leaves(finished.params), strict=True):
        np.testing.assert_array_equal(x, y)


def _sweep_cli(directory, *extra, fault=None, wait=True, fresh=False):
    args = [
        "--config",
        "experiments/configs/digits_cvae.py",
        "--workdir",
        str(directory),
        "--seeds",
        "0:2",
        "--grid",
        "model.sigma0=0.01,0.3",
        *[f"--config.{k}={v}" for k, v in SMALL.items()],
        *extra,
    ]
    env = {"CVAE_FAULT": fault}
    if not wait:
        return launcher.start("experiments.sweep", *args, env=env, fresh=fresh)
    return launcher.run("experiments.sweep", *args, env=env, fresh=fresh)


MEMBERS = ["sigma0=0.01/seed=0", "sigma0=0.01/seed=1", "sigma0=0.3/seed=0", "sigma0=0.3/seed=1"]


def _assert_same_sweep(a, b):
    for name in MEMBERS:
        assert _records(a / name) == _records(b / name), name
        for x, y in zip(
            _leaves(cvae.load_run(a / name, "latest").params),
            _leaves(cvae.load_run(b / name, "latest").params),
            strict=True,
        ):
            np.testing.assert_array_equal(x, y)


def test_a_killed_sweep_resumes_to_the_uninterrupted_sweep(tmp_path):
    # The uninterrupted sweep in a fresh interpreter, the others forked from the launcher:
    # their string-hash seeds differ, so a dependence on set order would show.
    whole = _sweep_cli(tmp_path / "whole", fresh=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    # Killed in the middle of epoch 2's saves: some members are one epoch ahead.
    killed = _sweep_cli(tmp_path / "killed", fault="checkpoint_save:11")
    assert killed.returncode == -9
    epochs = {cvae.load_run(tmp_path / "killed" / n, "latest").meta["epoch"] for n in MEMBERS}
    assert len(epochs) == 2  # the members were caught at different epochs
    resumed = _sweep_cli(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_sweep(tmp_path / "whole", tmp_path / "killed")
    status = json.loads((tmp_path / "killed" / "sweep.json").read_text())["members"]
    assert {e["status"] for e in status.values()} == {"done"}


def test_sigterm_stops_a_sweep_saved_and_the_rerun_finishes_it(tmp_path):
    import signal
    import time

    proc = _sweep_cli(tmp_path / "stopped", "--config.train.num_epochs=30", wait=False)
    metrics = tmp_path / "stopped" / MEMBERS[-1] / "metrics.jsonl"
    deadline = time.time() + 200
    while not (metrics.exists() and metrics.read_text().count('"train"') >= 1):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=200)
    assert proc.returncode == 143, err[-2000:]  # stopped before finishing: never 0
    assert "interrupted: rerun the same command to resume" in out
    status = json.loads((tmp_path / "stopped" / "sweep.json").read_text())["members"]
    assert {e["status"] for e in status.values()} == {"interrupted"}
    stopped_at = {e["epoch"] for e in status.values()}
    assert len(stopped_at) == 1 and 1 <= stopped_at.pop() < 30
    # 3 epochs: the stop came at or before the end; then every member is evaluated
    resumed = _sweep_cli(tmp_path / "stopped", "--evaluate", "3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "evaluated 4 finished member(s) with K = 3" in resumed.stdout
    for name in MEMBERS:
        scores = json.loads((tmp_path / "stopped" / name / "eval.json").read_text())
        assert scores["k"] == 3 and scores["split"] == "test" and scores["nll_is"] > 0


def test_two_array_tasks_share_one_sweep_directory(tmp_path):
    tasks = [
        _sweep_cli(tmp_path, "--shard", f"{i}/2", "--grid", "model.latent_dim=2,4", wait=False)
        for i in range(2)
    ]
    for task in tasks:
        out, err = task.communicate(timeout=300)
        assert task.returncode == 0, err[-2000:]
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert len(record["members"]) == 8  # 2 σ₀ × 2 latent sizes × 2 seeds
    assert {e["status"] for e in record["members"].values()} == {"done"}
    assert len(record["groups"]) == 2  # latent_dim changes shapes: two programs
    for name in record["members"]:
        run = cvae.load_run(tmp_path / name)
        assert run.config.model.latent_dim == int(name.split("latent_dim=")[1].split("/")[0])
    summary = run_cli(
        "experiments.report",
        "--group_by",
        "model.sigma0",
        "--plot",
        str(tmp_path / "sigma0.png"),
        "--reference",
        str(tmp_path),
        str(tmp_path),
    )
    assert summary.returncode == 0, summary.stderr
    assert (tmp_path / "sigma0.png").stat().st_size > 0
    assert [e["value"] for e in report.reference_groups([tmp_path])] == [
        f"{tmp_path.name} sigma0={s}/latent_dim={d}" for s in ("0.01", "0.3") for d in (2, 4)
    ]
    rows = [line for line in summary.stdout.splitlines() if line.startswith(("| 0.01 ", "| 0.3 "))]
    assert len(rows) == 2 and all(row.split("|")[2].strip() == "4" for row in rows)
    # Scores only an evaluation writes: the report says which runs lack them and how to add
    # them; evaluating the sweep directory writes every member's eval.json.
    assert "nll_is missing for 8 of 8 run(s)" in summary.stdout
    assert f"experiments.evaluate --workdir {tmp_path} (every member" in summary.stdout
    evaluated = run_cli("experiments.evaluate", "--workdir", str(tmp_path), "--k", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "wrote eval.json in 8 member(s)" in evaluated.stdout
    table = run_cli("experiments.report", str(tmp_path))
    assert table.returncode == 0, table.stderr[-2000:]
    header = table.stdout.splitlines()[0]
    assert "nll_is" in header and "fid_prior" not in header  # no run has a FID: no column
    assert "missing" not in table.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--grid", "model.sigmo=0.1"],
            "unknown config field 'model.sigmo'; did you mean 'model.sigma0'",
        ),
        (["--grid", "model.sigma0=0.1,abc"], "'abc' is not a float"),
        (["--grid", "model.sigma0=-1"], "model.sigma0 = -1.0 is invalid"),
        (["--grid", "model.upper_sigma0s=0.1"], "'0.1' is not a tuple such as (0.1,)"),
        (["--grid", "model.latent_dim=2,4", "--single_program"], "differ in model.latent_dim"),
        (["--seeds", "5:2"], "a sweep needs at least one seed"),
        (["--shard", "2/2"], "--shard '2/2' must read I/N"),
    ],
)
def test_bad_sweep_specs_fail_in_one_line_before_training(tmp_path, args, message):
    result = run_cli(
        "experiments.sweep",
        "--config",
        "experiments/configs/digits_cvae.py",
        "--workdir",
        str(tmp_path / "w"),
        *args,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "w").exists()


def test_a_tuple_field_sweeps_as_literals_and_names_its_members():
    """Commas inside a tuple's brackets do not split the grid; the values become the
    config's tuples (nested ones too), and members are named by their elements."""
    base = make_test_config(**{"model.upper_latent_dims": (2,), "model.upper_widths": ((8,),)})
    grid = sweep.parse_grid(
        [
            "model.upper_sigma0s=(0.01,), (0.1,)",
            "model.upper_widths=((8, 4),),[[16]]",
            "model.upper_posteriors=('gaussian',),(\"collapsed\",)",
        ],
        base,
    )
    assert grid == {
        "model.upper_sigma0s": [(0.01,), (0.1,)],
        "model.upper_widths": [((8, 4),), ((16,),)],
        "model.upper_posteriors": [("gaussian",), ("collapsed",)],
    }
    members = sweep.expand(base, [0], grid)
    assert len(members) == 8 and len({m.name for m in members}) == 8
    assert members[0].name == "upper_sigma0s=0.01/upper_widths=8x4/upper_posteriors=gaussian/seed=0"
    assert members[0].config.model.upper_widths == ((8, 4),)
    # σ₀ per layer is traced: the members that differ only in it share a group
    groups = {m.group for m in members if m.config.model.upper_widths == ((16,),)}
    assert len(groups) == 2  # one per posterior family of the upper layer


def test_population_refuses_configs_that_differ_in_structure(tmp_path):
    configs = [make_test_config(), make_test_config(**{"model.latent_dim": 3})]
    with pytest.raises(population.PopulationStructureError, match="model.latent_dim"):
        population.train_population(configs, [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(population.PopulationStructureError, match="weight_decay > 0"):
        population.train_population(
            [make_test_config(), make_test_config(**{"train.weight_decay": 1e-4})],
            [tmp_path / "a", tmp_path / "b"],
        )


def test_tokenizer_members_over_seeds_and_sigma0_train_as_alone(tmp_path):
    """Tokenizers (4×4×2 code maps) in one population, seeds and σ₀ differing: each member
    trains what its run alone trains."""
    tokenizer = {
        "model.arch": "conv_map",
        "model.conv_channels": (8,),
        "model.code_channels": 2,
        "train.num_epochs": 1,
    }
    configs = [
        make_test_config(seed=s, **tokenizer, **{"model.sigma0": v})
        for s, v in ((0, 0.01), (1, 0.3))
    ]
    result = population.train_population(configs, [tmp_path / f"m{i}" for i in range(2)])
    assert [o.status for o in result.outcomes] == ["done"] * 2
    for i, cfg in enumerate(configs):
        alone = training.train_and_evaluate(cfg, tmp_path / f"alone{i}")
        for x, y in zip(_member_params(result, i), _leaves(alone.state["params"]), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert cvae.load_run(tmp_path / "m1").encode(np.zeros((1, 8, 8, 1)))[0].shape == (1, 4, 4, 2)
