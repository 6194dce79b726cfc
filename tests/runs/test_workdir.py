"""The run directory's layout, owned by cvae.runs.workdir.Workdir."""

import json

import jax
import pytest

from cvae import config as config_lib
from cvae.runs import provenance
from cvae.runs.workdir import RunNotFoundError, Workdir

pytestmark = pytest.mark.unit


def test_config_round_trips_with_tuples_restored(tmp_path):
    wd = Workdir(tmp_path)
    config = config_lib.base_config()
    config.model.encoder_widths = (64, 32)
    wd.write_config(config)
    assert json.loads(wd.config_path.read_text())["model"]["encoder_widths"] == [64, 32]
    loaded = wd.read_config()
    assert loaded.model.encoder_widths == (64, 32) and loaded.model.decoder_widths == ()
    assert config_lib.flatten(loaded) == config_lib.flatten(config)


def test_metrics_append_filter_and_truncate(tmp_path):
    wd = Workdir(tmp_path)
    for step, split in [(10, "train"), (10, "validation"), (20, "train"), (30, "train")]:
        wd.append_metrics({"step": step, "split": split})
    assert [r["step"] for r in wd.read_metrics("train")] == [10, 20, 30]
    wd.truncate_metrics(20)
    assert [(r["step"], r["split"]) for r in wd.read_metrics()] == [
        (10, "train"),
        (10, "validation"),
        (20, "train"),
    ]
    assert not list(tmp_path.glob("*.tmp"))  # the rewrite went through a rename


def test_missing_runs_are_named(tmp_path):
    with pytest.raises(RunNotFoundError, match="does not exist"):
        Workdir(tmp_path / "nope").read_config()
    with pytest.raises(RunNotFoundError, match="no config.json"):
        Workdir(tmp_path).read_config()
    assert Workdir(tmp_path).read_eval() is None and not Workdir(tmp_path).has_run()


def test_clear_run_keeps_only_the_directory_and_unrelated_files(tmp_path):
    wd = Workdir(tmp_path)
    wd.write_eval({"elbo": -1.0})
    wd.append_metrics({"step": 1, "split": "train"})
    wd.checkpoints.mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    wd.clear_run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_training_records_its_provenance_and_report_prints_it(tmp_path):
    import jax

    from cvae import training
    from cvae.runs import provenance
    from experiments import report
    from tests.helpers import make_test_config

    training.train_and_evaluate(make_test_config(**{"train.num_epochs": 1}), tmp_path)
    record = Workdir(tmp_path).read_provenance()
    assert record["versions"]["jax"] == jax.__version__
    assert record["device_count"] == jax.device_count() and record["platform"] == "cpu"
    assert record == {**provenance.collect()}  # same process, same answer
    line = report.provenance_lines([tmp_path])
    assert line.startswith(f"Runs {tmp_path.name}: ") and f"jax {jax.__version__}" in line
    if record["git_commit"]:  # a git checkout (CI clones one)
        assert len(record["git_commit"]) == 40 and "commit " + record["git_commit"][:10] in line


def test_lock_differences_name_each_package_off_the_lock():
    lock = "# comment\nJax==0.10.2\nnumpy==2.4.6  # pinned\nflax_x==1.0\n\n"
    assert (
        provenance.lock_differences(lock, {"jax": "0.10.2", "numpy": "2.4.6", "flax-x": "1.0"})
        == []
    )
    assert provenance.lock_differences(lock, {"jax": "0.10.3", "numpy": "2.4.6"}) == [
        "flax-x: installed None, lock 1.0",
        "jax: installed 0.10.3, lock 0.10.2",
    ]


def test_installed_versions_read_from_folder_names_equal_the_packages_metadata():
    import importlib.metadata

    from_metadata = {
        provenance._normalised(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions()
        if d.metadata["Name"]
    }
    assert provenance.installed_versions() == from_metadata
    assert from_metadata["jax"] == jax.__version__


def test_provenance_says_whether_the_environment_is_the_locks():
    record = provenance.collect()["environment"]
    assert record["lock_file"] == "requirements.lock"
    assert record["matches"] == (record["differences"] == [])
