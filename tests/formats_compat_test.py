"""Files written by earlier faq_jax versions still load and give the same results.

``tests/fixtures`` holds small files written by faq_jax at commit 03701a0 (see
``tests/fixtures/README.md``): an exported integer network with its executor output, a
converted checkpoint with its logits, the JSON files of a training workdir, and a digest
of every zoo network's variable paths. A change that breaks one of them breaks the files
users (and running studies) already have; such a change needs a new format version, not an
edit of these fixtures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from faq_jax import converted, export, models, optim, steps, train
from faq_jax import policy as policy_lib
from faq_jax.export import cli as export_cli
from faq_jax.models import resnet_cifar

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def test_exported_network_v1_loads_and_runs_unchanged():
    net = export.load(str(FIXTURES / "intnet_v1.npz"))
    want = np.load(FIXTURES / "intnet_v1_expected.npz")
    assert net.graph["format"] == "faq_jax.intnet" and net.graph["version"] == 1
    np.testing.assert_array_equal(export.input_codes(net, want["x"]), want["x_codes"])
    q, lsb = export.run(net, want["x_codes"])
    np.testing.assert_array_equal(q, want["logits_q"])
    assert lsb == int(want["logits_l"])


def test_exported_network_v1_onnx_matches_the_executor():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from faq_jax.export import onnx_writer  # noqa: PLC0415

    net = export.load(str(FIXTURES / "intnet_v1.npz"))
    want = np.load(FIXTURES / "intnet_v1_expected.npz")
    model = onnx_writer.to_onnx(net)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(np.transpose(want["x_codes"], (0, 3, 1, 2)))
    (q,) = sess.run(None, {"x_codes": x})
    np.testing.assert_array_equal(q, want["logits_q"])


def _tiny_cifar_resnet(policy=None):
    m = resnet_cifar.ResNetCifar(stage_sizes=(1, 1), width=4, num_classes=3, shortcut="A",
                                 classifier="linear")
    return m if policy is None else m.clone(policy=policy.with_roles(m.roles()))


def test_converted_checkpoint_v1_loads_with_the_same_logits():
    path = FIXTURES / "converted_v1"
    want = np.load(FIXTURES / "converted_v1_expected.npz")
    assert converted.input_normalization(path) == ((0.5,) * 3, (0.25,) * 3)
    variables = converted.load(path, arch="tiny_cifar_resnet")
    model = _tiny_cifar_resnet()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    assert jax.tree.structure(variables) == jax.tree.structure(dict(shapes))
    np.testing.assert_allclose(model.apply(variables, want["x"], train=False), want["logits"],
                               rtol=1e-6, atol=1e-6)
    quant = _tiny_cifar_resnet(policy_lib.W4A4)
    from faq_jax import calibrate  # noqa: PLC0415

    qv = {**variables, "quant": quant.init(jax.random.key(0), want["x"])["quant"]}
    qv["quant"] = calibrate.calibrate(quant, qv, [want["x"]])
    np.testing.assert_allclose(quant.apply(qv, want["x"], train=False), want["quant_logits"],
                               rtol=1e-6, atol=1e-6)


def _variable_lines(tree) -> list[str]:
    return sorted(f"{'/'.join(str(k.key) for k in p)}:{tuple(v.shape)}"
                  for p, v in jax.tree_util.tree_flatten_with_path(tree)[0])


_BIG = ("resnet101", "resnet152", "densenet161", "inception_v3", "cifar_resnet110", "vgg16_bn")


@pytest.mark.parametrize("arch", [a if a not in _BIG else pytest.param(a, marks=pytest.mark.slow)
                                  for a in models.ARCHS])
def test_variable_paths_of_every_network_are_unchanged(arch):
    """Converted checkpoints, workdir checkpoints and summary.json's calibrated l's are keyed
    by these paths (params, batch_stats and quant of the W4A4 network)."""
    want = json.loads((FIXTURES / "variable_paths_v1.json").read_text())[arch]
    size = models.spec(arch).min_size
    m = models.create(arch, policy=policy_lib.W4A4, num_classes=10)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    lines = _variable_lines(dict(jax.eval_shape(lambda x: m.init(jax.random.key(0), x), x)))
    assert len(lines) == want["count"]
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == want["sha256"]


def test_train_state_fields_are_the_checkpoint_layout():
    """Orbax stores the TrainState by field name: renaming one orphans every checkpoint."""
    names = [f.name for f in dataclasses.fields(steps.TrainState)]
    assert names == ["step", "params", "batch_stats", "quant", "opt_state", "rng"]


def _old_workdir(tmp_path: pathlib.Path) -> tuple[ml_collections.ConfigDict, pathlib.Path]:
    """A workdir in the layout of 03701a0: its JSON files, plus orbax checkpoints of both
    training stages at their last step (``fp32/2``, ``checkpoints/2``)."""
    wd = tmp_path / "w"
    shutil.copytree(FIXTURES / "workdir_v1", wd)
    config = ml_collections.ConfigDict(json.loads((wd / "config.json").read_text()))
    summary = json.loads((wd / "summary.json").read_text())
    x = jnp.zeros((1, 8, 8, 3))
    qmodel = models.create(config.arch, policy=policy_lib.paper_policy(4, 4), num_classes=10)
    variables = dict(qmodel.init(jax.random.key(0), x))
    lsbs = summary["calibrated_lsb"]
    variables["quant"] = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(lsbs["/".join(k.key for k in p[:-1])], v.dtype),
        variables["quant"])
    for sub, run in (("fp32", config.pretrain), ("checkpoints", config)):
        run = ml_collections.ConfigDict(dict(num_epochs=run.num_epochs, batch_size=run.batch_size,
                                             micro_batch_size=0, batch_schedule=(),
                                             optim=run.optim))
        batches = optim.batch_schedule(run, 1497, int(run.num_epochs))
        tx = optim.make_optimizer(run.optim, batches)
        state = steps.create_state(variables, tx, jax.random.key(config.seed + 1), step=2)
        mgr = ocp.CheckpointManager(str(wd / sub))
        mgr.save(2, args=ocp.args.StandardSave(state))
        mgr.wait_until_finished()
        mgr.close()
    return config, wd


def test_workdir_v1_resumes_and_exports(tmp_path, caplog):
    config, wd = _old_workdir(tmp_path)
    before = json.loads((wd / "summary.json").read_text())
    result = train.train_and_evaluate(config, str(wd))
    # Written before configs were recorded: accepted with a warning, its config recorded.
    assert "written before faq_jax recorded the config" in caplog.text
    assert [e["event"] for e in json.loads((wd / "config_history.json").read_text())] == \
        ["adopted"]
    after = json.loads((wd / "summary.json").read_text())
    # Nothing retrained or recalibrated: the earlier results and l's are kept.
    for key in ("fp32", "quant_before", "calibrated_lsb"):
        assert after[key] == before[key]
    assert result["quant_after"]["count"] == 300
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["2"]
    assert json.loads((wd / "experiment.json").read_text())["arch"] == "resnet20"
    model, variables, _ = export_cli.load_workdir(str(wd))
    net = export.export(model, variables, input_shape=(8, 8, 3))
    assert {n["path"]: n["l"] for n in net.nodes if n["op"] == "requant"} == \
        {k: int(v) for k, v in before["calibrated_lsb"].items()}


def test_workdir_v1_mid_fine_tuning_exports_saying_its_step(tmp_path, capsys):
    _, wd = _old_workdir(tmp_path)
    summary = json.loads((wd / "summary.json").read_text())
    del summary["quant_after"]  # fine-tuning not finished
    (wd / "summary.json").write_text(json.dumps(summary))
    export_cli.main(["--workdir", str(wd), "--out", str(tmp_path / "net.npz")])
    assert "exported step 2: fine-tuning has not finished" in capsys.readouterr().out
