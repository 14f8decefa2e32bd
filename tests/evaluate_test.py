"""python -m faq_jax.evaluate: a read-only workdir at any stage and step, a folder of
images, an exported integer network (.npz and .onnx)."""

import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=900)


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    return r.stdout


def _hashes(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(
        p.stat().st_mode) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def read_only_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run, made read-only (``chmod -R a-w``)."""
    workdir = tmp_path_factory.mktemp("ro") / "w"
    shutil.copytree(tiny_run[0], workdir)
    for p in [workdir, *workdir.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield workdir, tiny_run[1]
    for p in [workdir, *workdir.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_read_only_workdir_any_stage_and_step(read_only_run, tmp_path):
    workdir, summary = read_only_run
    before = _hashes(workdir)
    out = tmp_path / "after.json"
    _ok(_cli("faq_jax.evaluate", f"--workdir={workdir}", f"--out={out}"))
    after = json.loads(out.read_text())
    assert after["network"] == "W3A3 fine-tuned, step 16" and after["count"] == 300
    assert after["top1"] == pytest.approx(summary["quant_after"]["top1"], abs=0.34)
    assert after["correct"]  # the per-image hits, for paired comparisons
    # An earlier fp32 checkpoint; the default JSON lands beside the workdir.
    printed = _ok(_cli("faq_jax.evaluate", f"--workdir={workdir}", "--stage=fp32",
                       "--step=8"))
    default = pathlib.Path(f"{workdir}_eval_fp32_step8_digits.json")
    assert f"wrote {default}" in printed and "fp32, step 8 of pretraining" in printed
    assert json.loads(default.read_text())["count"] == 300
    r = _cli("faq_jax.evaluate", f"--workdir={workdir}", "--step=5", f"--out={out}")
    assert r.returncode == 1 and "has no checkpoint at step 5; it has steps 1, 8, 16" in r.stderr
    assert "Traceback" not in r.stderr
    assert _hashes(workdir) == before  # nothing in the workdir changed


def test_folder_of_images_and_exported_networks(tiny_run, tmp_path):
    from PIL import Image

    from faq_jax.data import digits

    workdir, summary = tiny_run
    d = digits.load()
    for i, (x, y) in enumerate(zip(d.eval_x, d.eval_y, strict=True)):
        (tmp_path / "digits" / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(x * 255).astype(np.uint8)).convert("RGB").save(
            tmp_path / "digits" / str(y) / f"{i:03d}.png")
    m, s = d.mean, d.std  # the digits pipeline's normalisation, for files in [0, 255]
    data = ["--data.name=folder", f"--data.eval_dir={tmp_path / 'digits'}",
            f"--data.mean=({m},{m},{m})", f"--data.std=({s},{s},{s})"]
    out = tmp_path / "folder.json"
    _ok(_cli("faq_jax.evaluate", f"--workdir={workdir}", f"--out={out}", *data))
    folder = json.loads(out.read_text())
    assert folder["count"] == 300
    assert folder["top1"] == pytest.approx(summary["quant_after"]["top1"], abs=1.0)
    # The exported integer network, by the NumPy executor and by onnxruntime.
    net = tmp_path / "net.npz"
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "net.onnx"
    fast = tmp_path / "net_int8.onnx"
    _ok(_cli("faq_jax.export", "--workdir", str(workdir), "--out", str(net),
             "--onnx", str(onnx), "--onnx_int8", str(fast)))
    results = {}
    for model in (net, onnx, fast):
        printed = _ok(_cli("faq_jax.evaluate", f"--model={model}", f"--workdir={workdir}",
                           *data))
        default = tmp_path / f"{model.stem}_eval_folder-digits.json"
        assert f"wrote {default}" in printed
        results[model.name] = json.loads(default.read_text())
    exact, onnx_exact, deploy = (results[p.name] for p in (net, onnx, fast))
    assert exact["count"] == deploy["count"] == 300
    assert exact["top1"] == pytest.approx(folder["top1"], abs=1.0)
    assert onnx_exact["correct"] == exact["correct"]  # bit-exact, both
    assert deploy["top1"] > 10.0  # int8 deployment model: close, not bit-exact
    # --onnx_int8_vnni: int8 weights everywhere (the default writes 8-bit ones as uint8).
    vnni = tmp_path / "net_vnni.onnx"
    _ok(_cli("faq_jax.export", "--workdir", str(workdir), "--out", str(net),
             "--onnx_int8", str(vnni), "--onnx_int8_vnni"))
    import onnx as onnx_lib  # noqa: PLC0415 - the export extra

    props = {p: {m.key: m.value for m in onnx_lib.load(str(p)).metadata_props}
             for p in (fast, vnni)}
    assert props[fast]["portable"] == "1" and props[vnni]["portable"] == "0"
    weights = {p: {t.data_type for t in onnx_lib.load(str(p)).graph.initializer
                   if len(t.dims) >= 2} for p in (fast, vnni)}  # conv / dense weights
    assert weights[vnni] == {onnx_lib.TensorProto.INT8}
    assert onnx_lib.TensorProto.UINT8 in weights[fast]  # the 8-bit first conv, classifier
    r = _cli("faq_jax.export", "--workdir", str(workdir), "--out", str(net),
             "--onnx_int8_vnni")
    assert r.returncode == 2 and "give --onnx_int8 FILE as well" in r.stderr, r.stderr
