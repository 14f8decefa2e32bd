"""The workdir's files: names, atomic JSON writes, the experiment guard, the config."""

import json

import pytest

from faq_jax import workdir
from faq_jax.config import demo


def test_file_names_are_the_v1_layout(tmp_path):
    wd = str(tmp_path)
    assert (workdir.EXPERIMENT, workdir.CONFIG, workdir.SUMMARY) == (
        "experiment.json", "config.json", "summary.json")
    assert workdir.finetune_dir(wd) == f"{wd}/checkpoints"
    assert workdir.pretrain_dir(wd) == f"{wd}/fp32"


def test_summary_round_trip_leaves_no_temporary_file(tmp_path):
    assert workdir.read_summary(str(tmp_path)) == {}
    workdir.write_summary(str(tmp_path), {"b": 1, "a": {"top1": 2.5}})
    assert workdir.read_summary(str(tmp_path)) == {"a": {"top1": 2.5}, "b": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_experiment_guard(tmp_path):
    wd = tmp_path / "new"
    workdir.check_experiment(str(wd), {"arch": "resnet20", "w_bits": 4})
    assert json.loads((wd / "experiment.json").read_text()) == {"arch": "resnet20",
                                                                 "w_bits": 4}
    workdir.check_experiment(str(wd), {"arch": "resnet20", "w_bits": 4})
    with pytest.raises(workdir.CheckpointError, match="another experiment.*w_bits"):
        workdir.check_experiment(str(wd), {"arch": "resnet20", "w_bits": 8})
    (wd / "experiment.json").write_text("{")
    with pytest.raises(workdir.CheckpointError, match="corrupt"):
        workdir.check_experiment(str(wd), {"arch": "resnet20"})


def test_read_config_prefers_config_json_then_the_experiment(tmp_path):
    c = demo.get_config()
    c.num_epochs = 3
    workdir.check_experiment(str(tmp_path), {"arch": "resnet20", "num_classes": 10,
                                             "dataset": "digits", "quant": True,
                                             "w_bits": 4, "a_bits": 4, "rules": []})
    older = workdir.read_config(str(tmp_path))  # a workdir from before config.json
    assert (older.arch, older.num_classes, older.quant.w_bits) == ("resnet20", 10, 4)
    workdir.write_config(str(tmp_path), c)
    assert workdir.read_config(str(tmp_path)).num_epochs == 3


def test_experiment_guard_compares_keys_either_side_records(tmp_path):
    """An LSQ run records its method; an FAQ config (which records none) is still refused."""
    wd = str(tmp_path)
    workdir.check_experiment(wd, {"arch": "resnet20", "method": "lsq"})
    with pytest.raises(workdir.CheckpointError, match="method: workdir has 'lsq', config "
                       "has None"):
        workdir.check_experiment(wd, {"arch": "resnet20"})
