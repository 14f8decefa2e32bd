"""Where metrics go: metrics.jsonl without TensorFlow, read back like TensorBoard events."""

import json

import numpy as np

from faq_jax import writers


def test_jsonl_writer_round_trips_through_read_scalars(tmp_path):
    w = writers.JsonlWriter(str(tmp_path))
    w.write_hparams({"lr": 0.01, "arch": "resnet20"})
    w.write_scalars(2, {"train/loss": np.float32(1.5), "train/top1": 10})
    w.write_scalars(1, {"train/loss": 2.5})
    w.close()
    lines = [json.loads(x) for x in (tmp_path / writers.JSONL).read_text().splitlines()]
    assert lines[0] == {"hparams": {"lr": 0.01, "arch": "resnet20"}}
    assert writers.read_scalars(tmp_path) == {"train/loss": [(1, 2.5), (2, 1.5)],
                                              "train/top1": [(2, 10.0)]}


def test_other_processes_write_nothing(tmp_path):
    w = writers.JsonlWriter(str(tmp_path), just_logging=True)
    w.write_scalars(1, {"train/loss": 1.0})
    w.flush()
    assert not list(tmp_path.iterdir()) and writers.read_scalars(tmp_path) == {}


def test_tensorboard_events_are_read_back(tmp_path):
    w = writers.create(str(tmp_path), just_logging=False)  # TensorFlow is installed here
    w.write_scalars(3, {"eval/top1": 0.5})
    w.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert writers.read_scalars(tmp_path) == {"eval/top1": [(3, 0.5)]}
