"""benchmarks/cifar10_pretrained.py's report helpers: Fig. 1 numbers and paired run pairs."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import cifar10_pretrained as study  # noqa: E402


def test_grad_noise_summary_averages_the_second_half_over_common_layers():
    def curve(first, second):  # logged at steps 10..40: the second half is 30, 40
        return [(10, first), (20, first), (30, second), (40, second)]

    curves = {
        8: {"conv1": curve(9, 0.9), "a": curve(9, 0.5), "b": curve(9, 0.4), "fc": curve(9, 0.9)},
        4: {"conv1": curve(9, 0.9), "a": curve(9, 0.2), "b": curve(9, 0.4), "fc": curve(9, 0.9)},
    }
    # A resumed run logs a step twice: it counts once, with its last value.
    curves[4]["a"] = curves[4]["a"] + [(40, 0.2)]
    lines = study.summarize_grad_noise(curves, {8: {"conv1", "a", "b", "fc"}, 4: {"a", "b"}})
    text = "\n".join(lines)
    assert "mean over the 2 layers" in text
    assert "- W8A8: 0.450" in text and "- W4A4: 0.300" in text
    # b ties, so the sign test sees one layer: p = 1.
    assert "- W8A8 above W4A4 in 1 of 2 layers, below in 0 (sign test p 1)" in text
    assert "resumed, so their EMA restarted mid-run: W4A4" in text
    assert study.summarize_grad_noise({}, {}) == []
    assert study.summarize_grad_noise({2: {}}, {2: set()}) == []


def _run(root, name, pred, label):
    (root / name).mkdir()
    np.savez(root / name / "predictions.npz", pred=np.array(pred), label=np.array(label))


def test_pair_compares_two_runs_on_the_same_images(tmp_path):
    _run(tmp_path, "a", [0, 1, 2, 0], [0, 1, 2, 3])
    _run(tmp_path, "b", [0, 1, 0, 3], [0, 1, 2, 3])
    assert study.pair(tmp_path, "a", "b").startswith("b - a: +0.00 points")
    _run(tmp_path, "c", [0, 1, 2, 3], [3, 2, 1, 0])
    with pytest.raises(SystemExit, match="not evaluated on the same images"):
        study.pair(tmp_path, "a", "c")
    with pytest.raises(SystemExit, match="does not exist"):
        study.pair(tmp_path, "a", str(tmp_path / "missing"))


@pytest.mark.parametrize("net_name", ["resnet20", "resnet56"])  # NumPy executor / ONNX model
def test_integer_check_agrees_with_the_float64_simulation(net_name, tmp_path):
    pytest.importorskip("onnxruntime")
    from faq_jax import export, models
    from faq_jax import policy as policy_lib

    model = models.create("cifar_resnet20", policy=policy_lib.paper_policy(4, 4),
                          num_classes=10)
    variables = export.random_variables(model, (32, 32, 3))
    images = np.random.default_rng(0).normal(size=(6, 32, 32, 3)).astype(np.float32)
    labels = np.arange(6) % 10
    r = study.integer_check(net_name, model, variables, images, labels, tmp_path)
    assert (r["agree"], r["n"]) == (6, 6)
    assert r["integer_top1"] == r["float64_sim_top1"]
    assert ("ONNX" in r["runner"]) == (net_name == "resnet56")


def test_keep_copies_what_the_report_reads(tmp_path):
    from faq_jax import writers

    wd, dest = tmp_path / "wd" / "resnet20", tmp_path / "kept" / "resnet20"
    wd.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 10, 200)
    for name, p_right in (("fp32_adapted", 0.9), ("w4a4", 0.8), ("w8a8", 0.9)):
        _run(wd, name, np.where(rng.random(200) < p_right, label, (label + 1) % 10), label)
        (wd / name / "record.json").write_text(
            '{"cpu_s": 60.0, "top1": 1.0, "summary": {"weight_cosine": {"mean": 0.99}}}')
        (wd / name / "run").mkdir()
        (wd / name / "run" / "checkpoint_0").write_bytes(b"x" * 1000)  # not kept
    _run(wd, "w2a2", [0], [0])  # unfinished: no record.json, not kept
    (wd / "noise_w4" / "run").mkdir(parents=True)
    (wd / "noise_w4" / "record.json").write_text('{"cpu_s": 6.0, "summary": {}}')
    config = study.run_config("resnet20", "noise_w4", "", "", ((0.5,) * 3, (0.25,) * 3))
    (wd / "noise_w4" / "run" / "config.json").write_text(config.to_json_best_effort())
    w = writers.JsonlWriter(str(wd / "noise_w4" / "run"))
    for step, v in ((5, 0.5), (10, 0.25), (10, 0.3)):  # step 10 logged twice (resumed)
        w.write_scalars(step, {"grad_noise/stage1_0/conv1": v, "train_loss": 2.0})

    assert study.keep(wd, dest, "resnet20") == ["fp32_adapted", "w8a8", "w4a4", "noise_w4"]
    assert study.report("resnet20", dest) == study.report("resnet20", wd)
    assert study.pair(dest, "w8a8", "w4a4") == study.pair(wd, "w8a8", "w4a4")
    assert np.load(dest / "w4a4" / "predictions.npz")["pred"].dtype == np.uint8
    assert not (dest / "w4a4" / "run").exists() and not (dest / "w2a2").exists()
    assert writers.read_scalars(dest / "noise_w4" / "run") == {
        "grad_noise/stage1_0/conv1": [(5, 0.5), (10, 0.25), (10, 0.3)]}
    assert (dest / "noise_w4" / "run" / "config.json").read_text() == config.to_json_best_effort()
    study.keep(wd, dest, "resnet20")  # again: the same copy, curves not doubled
    assert len(writers.read_scalars(dest / "noise_w4" / "run")["grad_noise/stage1_0/conv1"]) == 3
