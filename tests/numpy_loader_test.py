"""The TensorFlow-free loader (``config.data.loader="numpy"``): the same evaluation batches
as tf.data, bit for bit, on the python archive and on a JPEG image folder; the same training
order; a correct, resumable, process-count-independent crop-and-flip; and a whole FAQ run in
a process where TensorFlow cannot be imported."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from data_cifar10_test import cifar_config, mini  # noqa: F401 - the miniature archives
from PIL import Image

from faq_jax import workdir
from faq_jax.data import numpy_loader, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _eval(config, batch=3):
    return list(pipeline.eval_batches(config, local_batch_size=batch))


def _train(config, n, start=0, batch=4, **kw):
    return list(itertools.islice(pipeline.train_batches(config, local_batch_size=batch,
                                                        start_step=start, **kw), n))


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype, k
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """train/ and eval/ folders of real 32x32 JPEGs (quality 75, 4:2:0, as the archive)."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("eval", 2)):
        for c in ("cat", "dog", "emu"):
            os.makedirs(root / split / c)
            for k in range(n):
                x = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(x).save(root / split / c / f"{k}.jpg", quality=75)
    return root


def _folder_config(root, **data):
    return cifar_config(name="folder", train_dir=str(root / "train"),
                        eval_dir=str(root / "eval"), **data)


def test_evaluation_batches_equal_tf_data_bit_for_bit(mini, jpeg_folder):  # noqa: F811
    for config in (cifar_config(archive=mini["python"]), _folder_config(jpeg_folder)):
        tf_batches = _eval(config)
        config.data.loader = "numpy"
        _same(_eval(config), tf_batches)


def test_training_order_equals_tf_data_without_augmentation(mini, jpeg_folder):  # noqa: F811
    for config in (cifar_config(archive=mini["python"], augment="none"),
                   _folder_config(jpeg_folder, augment="none")):
        tf_batches = _train(config, 7)
        config.data.loader = "numpy"
        _same(_train(config, 7), tf_batches)


def test_crop_and_flip_resume_and_any_process_count(mini):  # noqa: F811
    config = cifar_config(archive=mini["python"], loader="numpy")
    plain = cifar_config(archive=mini["python"], loader="numpy", augment="none")
    batches, originals = _train(config, 10), _train(plain, 10)
    zero = numpy_loader.normalize(np.zeros((3,), np.uint8), config.data.mean, config.data.std,
                                  np.float32)  # a padding pixel, normalised
    for b, o in zip(batches, originals, strict=True):
        np.testing.assert_array_equal(b["label"], o["label"])
        for image, original in zip(b["image"], o["image"], strict=True):
            padded = np.tile(zero, (40, 40, 1))
            padded[4:36, 4:36] = original
            crops = [c[:, ::-1] if flip else c for top in range(9) for left in range(9)
                     for c in [padded[top:top + 32, left:left + 32]] for flip in (0, 1)]
            assert any(np.array_equal(image, c) for c in crops)
    assert not all(np.array_equal(b["image"], o["image"])
                   for b, o in zip(batches, originals, strict=True))  # it does augment
    _same(_train(config, 4, start=6), batches[6:10])  # resumes exactly
    # Two processes' batches of 2 are, together, the single process's batches of 4.
    halves = [_train(config, 10, batch=2, process_index=p, process_count=2) for p in (0, 1)]
    for k, whole in enumerate(batches):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([halves[0][k][key], halves[1][k][key]]), whole[key])


def test_bad_settings_and_files_are_named(mini, jpeg_folder, tmp_path):  # noqa: F811
    for data, needle in ((dict(loader="torch"), "config.data.loader must be one of"),
                         (dict(loader="numpy", augment="imagenet"), "not 'imagenet'"),
                         (dict(loader="numpy", eval_resize=36), "does not resize"),
                         (dict(loader="numpy", source="tfds"), "not TFDS")):
        with pytest.raises(ValueError, match=needle):
            pipeline.dataset_info(cifar_config(archive=mini["python"], **data))
    with pytest.raises(ValueError, match="image_size=32"):
        _eval(cifar_config(archive=mini["python"], loader="numpy", image_size=28,
                           eval_resize=28))
    def folder_with(name, image_or_bytes):
        root = tmp_path / name
        for split in ("train", "eval"):
            os.makedirs(root / split / "cat")
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / split / "cat" / "a.jpg")
        path = root / "eval" / "cat" / name
        if isinstance(image_or_bytes, bytes):
            path.write_bytes(image_or_bytes)
        else:
            Image.fromarray(image_or_bytes).save(path)
        return _folder_config(root, loader="numpy")

    with pytest.raises(ValueError, match=r"big\.jpg is 32x40.*does not resize"):
        _eval(folder_with("big.jpg", np.zeros((40, 32, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"Cannot decode image file\(s\): .*broken\.jpg"):
        _eval(folder_with("broken.jpg", b"not a jpeg"))


def test_workdirs_recorded_before_the_loader_field_stay_admitted():
    old = {"data": {"name": "cifar10"}}
    assert workdir.config_changes(old, {"data": {"name": "cifar10", "loader": "tf"}}) == {}
    assert workdir.config_changes(old, {"data": {"name": "cifar10", "loader": "numpy"}}) == {
        "data.loader": ("tf", "numpy")}


def test_prefetch_keeps_order_and_raises_in_place():
    def source():
        yield from range(5)
        raise ValueError("bad batch 5")

    got = []
    with pytest.raises(ValueError, match="bad batch 5"):
        for x in numpy_loader.prefetch(source()):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_a_run_without_tensorflow(mini, tmp_path):  # noqa: F811
    """Calibrate, fine-tune and evaluate a quantized CIFAR ResNet-20 in a process where
    ``import tensorflow`` fails; the scalars go to metrics.jsonl."""
    wd = tmp_path / "w"
    script = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None  # import tensorflow now raises ImportError
        sys.modules["tensorflow_datasets"] = None
        from faq_jax import train
        from faq_jax.config import defaults
        c = defaults.cifar10_base(4, 4, {mini["python"]!r})
        c.data.loader = "numpy"
        c.data.eval_split = "test"
        c.data.val_per_class = 0
        c.init = "random"
        c.stages = "calibrate,eval_quant,finetune"
        c.batch_size = c.eval_batch_size = 4
        c.calib.num_batches = 2
        c.max_steps = 3
        c.log_every_steps = 1
        r = train.train_and_evaluate(c, {str(wd)!r})
        assert "tensorflow" not in [m.split(".")[0] for m in sys.modules if sys.modules[m]]
        print("TOP1", r["quant_after"]["top1"], r["quant_after"]["count"])
    """)
    env = {**os.environ, "PYTHONPATH": ROOT,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "TOP1" in out.stdout and float(out.stdout.split()[-1]) == 7
    lines = (wd / "metrics.jsonl").read_text().splitlines()
    assert any("train/loss" in json.loads(line).get("scalars", {}) for line in lines)
    assert not list(wd.glob("events.out.tfevents.*"))
