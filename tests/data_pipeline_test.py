"""Tests of faq_jax.data.pipeline on real data: a miniature ILSVRC2012 built by the real TFDS
builder, image folders written here, the CIFAR-10 JPEG archive and scikit-learn's digits."""

from __future__ import annotations

import io
import itertools
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from faq_jax import optim
from faq_jax.config import defaults, demo
from faq_jax.data import digits, folder, imagenet, pipeline

CIFAR_ARCHIVE = defaults.shared_cifar10_archive(__file__)  # as the CIFAR-10 configs
SYNSETS = ("n01440764", "n01443537", "n01739381", "n02105855")
CMYK_NAME, PNG_NAME = "n01739381_1309.JPEG", "n02105855_2933.JPEG"  # Names the builder fixes.


def make_config(**data) -> ml_collections.ConfigDict:
    fields = dict(
        name="imagenet2012",
        data_dir="",
        manual_dir="",
        train_dir="",
        eval_dir="",
        source="archive",
        archive="",
        test_archive="",
        eval_split="val",
        cache_dir="",
        val_per_class=500,
        image_size=224,
        eval_resize=256,
        augment="imagenet",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        dtype="float32",
        shuffle_buffer=16384,
    )
    fields.update(data)
    return ml_collections.ConfigDict(dict(seed=0, data=ml_collections.ConfigDict(fields)))


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=95)
    return buffer.getvalue()


def id_image(index: int, size=(40, 30), mode="RGB") -> Image.Image:
    """A flat image whose red level encodes ``index`` (flat regions survive JPEG/resizing)."""
    if mode == "L":  # Grayscale: every channel, red included, at the same level.
        return Image.new("L", size, 20 + 10 * index)
    return Image.new("RGB", size, (20 + 10 * index, 128, 64)).convert(mode)


def decoded_ids(batch, config) -> np.ndarray:
    """Inverse of id_image on normalised batches: the red level back to the index."""
    red = batch["image"][..., 0].astype(np.float32).mean(axis=(1, 2))
    red = (red * config.data.std[0] + config.data.mean[0]) * 255
    return np.round((red - 20) / 10).astype(int)


def add_file(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def imagenet_dirs(tmp_path_factory):
    """A miniature ILSVRC2012 in the genuine layout, built once with the real TFDS builder."""
    root = tmp_path_factory.mktemp("ilsvrc")
    manual = root / "manual"
    manual.mkdir()
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as train_tar:
        for s, synset in enumerate(SYNSETS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as synset_tar:
                for k in range(4):
                    mode = "L" if k == 1 else "RGB"  # One grayscale JPEG per synset.
                    payload = encode(id_image(4 * s + k, size=(40 + 7 * k, 30), mode=mode))
                    add_file(synset_tar, f"{synset}_{k}.JPEG", payload)
                if synset == "n01739381":  # A CMYK JPEG, as in the real archive.
                    add_file(synset_tar, CMYK_NAME, encode(id_image(16, mode="CMYK")))
                if synset == "n02105855":  # A PNG named .JPEG, as in the real archive.
                    add_file(synset_tar, PNG_NAME, encode(id_image(17), "PNG"))
            add_file(train_tar, f"{synset}.tar", inner.getvalue())
    # Validation labels come from TFDS's validation_labels.txt, in sorted file-name order.
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as val_tar:
        for k in range(1, 12):
            image = id_image(k, size=(30 + 3 * k, 50 - k))
            add_file(val_tar, f"ILSVRC2012_val_{k:08d}.JPEG", encode(image))
    return str(manual), str(root / "tfds")


@pytest.fixture(scope="module")
def imagenet_config(imagenet_dirs):
    manual_dir, data_dir = imagenet_dirs
    return make_config(
        manual_dir=manual_dir, data_dir=data_dir, image_size=16, eval_resize=20, shuffle_buffer=8
    )


@pytest.fixture(scope="module")
def folder_config(tmp_path_factory):
    """Train: 3 classes x 5 images (one PNG, one grayscale); eval: 3 classes, 7 images."""
    root = tmp_path_factory.mktemp("folder")
    index = 0
    for split, per_class in (("train", 5), ("eval", (3, 2, 2))):
        for c, name in enumerate(("cat", "dog", "fox")):
            count = per_class if isinstance(per_class, int) else per_class[c]
            os.makedirs(root / split / name)
            for k in range(count):
                image = id_image(index, size=(36 + k, 40), mode="L" if k == 1 else "RGB")
                if k == 1:
                    image.save(root / split / name / f"{k:03d}.jpg", quality=95)
                elif k == 2:
                    image.save(root / split / name / f"{k:03d}.png")
                else:
                    image.save(root / split / name / f"{k:03d}.jpeg", quality=95)
                index += 1
        (root / split / "notes.txt").write_text("not a class")
    return make_config(
        name="folder",
        train_dir=str(root / "train"),
        eval_dir=str(root / "eval"),
        image_size=16,
        eval_resize=18,
    )


def collect_eval(config, batch_size: int, process_count: int):
    """Masked-in ids/labels of every process in process order, and the batch counts."""
    ids, labels, counts = [], [], []
    for p in range(process_count):
        batches = list(
            pipeline.eval_batches(
                config, local_batch_size=batch_size, process_index=p, process_count=process_count
            )
        )
        counts.append(len(batches))
        for batch in batches:
            assert batch["image"].shape[0] == batch_size and batch["mask"].dtype == bool
            assert not batch["image"][~batch["mask"]].any()  # Padding is zeros.
            ids.extend(decoded_ids(batch, config)[batch["mask"]])
            labels.extend(batch["label"][batch["mask"]])
    return np.array(ids), np.array(labels), counts


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


# ----------------------------------------------------------------------------- split logic


def test_shards_cover_split_once():
    for n, count in ((50_000, 8), (7, 2), (3, 4), (1_281_167, 64)):
        bounds = [pipeline.shard_bounds(n, p, count) for p in range(count)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1
    assert pipeline.tfds_split_spec("validation", 50_000, 1, 2) == "validation[25000:50000]"
    with pytest.raises(ValueError):
        pipeline.shard_bounds(10, 2, 2)


# ----------------------------------------------------------------------------- imagenet2012


def test_imagenet_real_builder(imagenet_config):
    info = pipeline.dataset_info(imagenet_config)
    assert info == pipeline.DatasetInfo(1000, 18, 11, (16, 16, 3))
    builder = imagenet.cached_builder(imagenet_config.data.data_dir, "")
    synset_labels = {builder.info.features["label"].str2int(s) for s in SYNSETS}
    batches = list(
        itertools.islice(pipeline.train_batches(imagenet_config, local_batch_size=4), 9)
    )
    for batch in batches:
        assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and set(batch["label"]) <= synset_labels
    # 18 examples, batch 4: 4 steps per epoch covering 16 distinct images (ids 0..17).
    epoch_ids = np.concatenate([decoded_ids(b, imagenet_config) for b in batches[:4]])
    assert len(set(epoch_ids)) == 16 and set(epoch_ids) <= set(range(18)), epoch_ids


def test_imagenet_eval_exact_two_processes(imagenet_config):
    ids1, labels1, counts1 = collect_eval(imagenet_config, 4, 1)
    ids2, labels2, counts2 = collect_eval(imagenet_config, 4, 2)
    assert counts1 == [3] and counts2 == [2, 2]
    assert sorted(ids1) == list(range(1, 12))  # The 11 validation images, each once.
    np.testing.assert_array_equal(ids1, ids2)
    np.testing.assert_array_equal(labels1, labels2)
    # Labels: validation_labels.txt line k for ILSVRC2012_val_0000000k.JPEG.
    builder = imagenet.cached_builder(imagenet_config.data.data_dir, "")
    import tensorflow_datasets as tfds

    path = tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")
    synsets = path.read_text().split()[:11]
    expected = [builder.info.features["label"].str2int(synsets[i - 1]) for i in ids1]
    np.testing.assert_array_equal(labels1, expected)


def test_imagenet_resume_two_processes(imagenet_config):
    for p in range(2):
        kwargs = dict(local_batch_size=2, process_index=p, process_count=2)  # 4 steps/epoch.
        full = list(itertools.islice(pipeline.train_batches(imagenet_config, **kwargs), 9))
        resumed = pipeline.train_batches(imagenet_config, start_step=3, **kwargs)
        assert_same_batches(full[3:], list(itertools.islice(resumed, 6)))


def test_imagenet_missing_archives(tmp_path):
    config = make_config(manual_dir=str(tmp_path / "nothing"), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError) as error:
        pipeline.dataset_info(config)
    message = str(error.value)
    for expected in (
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
        "image-net.org",
        str(tmp_path / "nothing"),
        "config.data.manual_dir",
    ):
        assert expected in message, message


# ----------------------------------------------------------------------------- folders


def test_folder_classes_and_batches(folder_config):
    info = pipeline.dataset_info(folder_config)
    assert info == pipeline.DatasetInfo(3, 15, 7, (16, 16, 3))
    train, _ = pipeline._splits(folder_config.data)
    assert train.classes == ("cat", "dog", "fox")
    assert [os.path.basename(p) for p in train.paths[:5]] == [
        "000.jpeg",
        "001.jpg",
        "002.png",
        "003.jpeg",
        "004.jpeg",
    ]
    batches = itertools.islice(pipeline.train_batches(folder_config, local_batch_size=5), 3)
    seen = []
    for batch in batches:
        ids = decoded_ids(batch, folder_config)
        np.testing.assert_array_equal(batch["label"], ids // 5)  # Ids 0-4 cat, 5-9 dog...
        seen.extend(ids)
    assert sorted(seen) == list(range(15))


def test_folder_eval_exact_two_processes(folder_config):
    ids1, labels1, counts1 = collect_eval(folder_config, 3, 1)
    ids2, labels2, counts2 = collect_eval(folder_config, 3, 2)
    assert list(ids1) == list(range(15, 22)) and list(labels1) == [0, 0, 0, 1, 1, 2, 2]
    assert counts1 == [3] and counts2 == [2, 2]
    np.testing.assert_array_equal(np.sort(ids2), ids1)
    np.testing.assert_array_equal(labels2, labels1)


def test_folder_resume_and_global_order(folder_config):
    # 15 images, global batch 4: 3 steps/epoch; resume across two epoch boundaries.
    full = list(
        itertools.islice(pipeline.train_batches(folder_config, local_batch_size=4), 8)
    )
    resumed = pipeline.train_batches(folder_config, local_batch_size=4, start_step=2)
    assert_same_batches(full[2:], list(itertools.islice(resumed, 6)))
    # Two processes of batch 2 see, together, the global batches of one process of batch 4.
    halves = [
        list(
            itertools.islice(
                pipeline.train_batches(
                    folder_config,
                    local_batch_size=2,
                    process_index=p,
                    process_count=2,
                    start_step=1,
                ),
                4,
            )
        )
        for p in range(2)
    ]
    for step in range(4):
        merged = np.concatenate([halves[p][step]["image"] for p in range(2)])
        np.testing.assert_array_equal(merged, full[1 + step]["image"])
    calibration = pipeline.calibration_batches(
        folder_config, local_batch_size=4, num_batches=2
    )
    assert_same_batches(list(calibration), full[:2])


def test_folder_corrupt_jpeg_names_file(folder_config, tmp_path):
    root = tmp_path / "bad"
    for name in ("a", "b"):
        os.makedirs(root / name)
        for k in range(3):
            id_image(k).save(root / name / f"{k}.jpg")
    (root / "b" / "1.jpg").write_bytes(encode(id_image(1))[:200])  # Truncated.
    (root / "a" / "2.jpg").write_bytes(b"not a jpeg at all")
    config = make_config(
        name="folder", train_dir=str(root), eval_dir=str(root), image_size=16, eval_resize=16
    )
    with pytest.raises(ValueError, match="Cannot decode image") as error:
        list(pipeline.eval_batches(config, local_batch_size=2))
    assert str(root / "a" / "2.jpg") in str(error.value)  # The first bad file met.
    with pytest.raises(ValueError, match="Cannot decode image.*jpg"):
        list(itertools.islice(pipeline.train_batches(config, local_batch_size=2), 6))
    id_image(2).save(root / "a" / "2.jpg")  # Repaired: the truncated JPEG is next.
    pipeline._cached_splits.cache_clear()
    with pytest.raises(ValueError, match="Cannot decode image") as error:
        list(pipeline.eval_batches(config, local_batch_size=2))
    assert str(root / "b" / "1.jpg") in str(error.value)


def test_folder_missing_or_empty(tmp_path):
    missing = make_config(name="folder", train_dir=str(tmp_path / "nope"), eval_dir="x")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        pipeline.dataset_info(missing)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    empty = make_config(name="folder", train_dir=str(tmp_path / "empty"), eval_dir="x")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        pipeline.dataset_info(empty)


@pytest.mark.skipif(not os.path.exists(CIFAR_ARCHIVE), reason="CIFAR-10 archive missing")
def test_cifar10_from_archive():
    config = make_config(
        name="cifar10",
        archive=CIFAR_ARCHIVE,
        cache_dir=folder.default_cache_dir(),
        image_size=32,
        eval_resize=32,
        augment="cifar",
        val_per_class=500,
        dtype="bfloat16",
    )
    info = pipeline.dataset_info(config)
    assert info == pipeline.DatasetInfo(10, 45_000, 5_000, (32, 32, 3))
    _, evaluation = pipeline._splits(config.data)
    assert os.path.basename(evaluation.paths[0]) == "4500.jpg"  # Last 500 of 5000 per class.
    batch = next(pipeline.train_batches(config, local_batch_size=8))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype.name == "bfloat16"
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    batch = next(pipeline.eval_batches(config, local_batch_size=8))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["mask"].all()
    assert pipeline.num_eval_batches(config, local_batch_size=8, process_count=3) == 209


# ----------------------------------------------------------------------------- digits


def test_digits_is_numpy_only():
    code = (
        "import sys, itertools, ml_collections\n"
        "from faq_jax.data import pipeline\n"
        "from tests.data_pipeline_test import make_config\n"
        "c = make_config(name='digits', image_size=16)\n"
        "b = next(pipeline.train_batches(c, local_batch_size=8))\n"
        "e = list(pipeline.eval_batches(c, local_batch_size=64))\n"
        "assert b['image'].shape == (8, 16, 16, 3), b['image'].shape\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_digits_splits_eval_and_resume():
    config = make_config(name="digits", image_size=8)
    info = pipeline.dataset_info(config)
    assert info == pipeline.DatasetInfo(10, 1497, 300, (8, 8, 3))
    for process_count in (1, 2):
        images, labels, counts = [], [], []
        for p in range(process_count):
            batches = list(
                pipeline.eval_batches(
                    config, local_batch_size=64, process_index=p, process_count=process_count
                )
            )
            counts.append(len(batches))
            images.extend(b["image"][b["mask"]] for b in batches)
            labels.extend(b["label"][b["mask"]] for b in batches)
        assert len(set(counts)) == 1
        eval_y = digits.load().eval_y
        np.testing.assert_array_equal(np.concatenate(labels), eval_y)
        assert np.concatenate(images).shape == (300, 8, 8, 3)
    assert np.bincount(eval_y).tolist() == [30] * 10
    full = list(itertools.islice(pipeline.train_batches(config, local_batch_size=500), 7))
    resumed = pipeline.train_batches(config, local_batch_size=500, start_step=2)
    assert_same_batches(full[2:], list(itertools.islice(resumed, 5)))
    assert not np.array_equal(full[0]["image"], full[2]["image"])  # Epochs reshuffle.


def test_accumulated_micro_batches_hold_one_batch_in_every_epoch():
    """Batch 32 as 2 x 16 (1,497 digits: 46 batches, 93 micro-batches per data epoch): with
    the schedule's epoch lengths every optimizer step sees the same 32 examples, in every
    epoch and after a resume."""
    c = demo.get_config()  # digits, no augmentation
    n = pipeline.dataset_info(c).num_train
    sched = optim.BatchSchedule(num_train=n, num_epochs=3, micro=16, sizes=((0, 32),))
    assert n // 16 > sched.steps_in_epoch(0) * sched.accum(0)  # a leftover micro-batch

    def lengths(e):
        return sched.steps_in_epoch(e) * sched.accum(e)

    big = pipeline.train_batches(c, local_batch_size=32)
    small = list(itertools.islice(
        pipeline.train_batches(c, local_batch_size=16, epoch_steps=lengths),
        2 * sched.total_steps()))
    for step in range(sched.total_steps()):
        b = next(big)
        for k in ("image", "label"):
            np.testing.assert_array_equal(
                b[k], np.concatenate([small[2 * step][k], small[2 * step + 1][k]]))
    resumed = pipeline.train_batches(c, local_batch_size=16, epoch_steps=lengths,
                                           start_step=95)
    for want in small[95:99]:
        np.testing.assert_array_equal(next(resumed)["label"], want["label"])


def test_tilde_in_data_paths_is_expanded(folder_config, imagenet_config, monkeypatch):
    """``--config.data.train_dir=~/x`` reaches the program unexpanded (no shell expands it)."""
    root = pathlib.Path(folder_config.data.train_dir).parent
    monkeypatch.setenv("HOME", str(root))
    tilde = make_config(name="folder", train_dir="~/train", eval_dir="~/eval", image_size=16,
                        eval_resize=18)
    assert pipeline.dataset_info(tilde) == pipeline.dataset_info(folder_config)
    want = pipeline.dataset_info(imagenet_config)  # builds it (manual_dir) if needed
    tfds_dir = pathlib.Path(imagenet_config.data.data_dir)
    monkeypatch.setenv("HOME", str(tfds_dir.parent))
    tilde = make_config(data_dir=f"~/{tfds_dir.name}", image_size=16, eval_resize=20)
    assert pipeline.dataset_info(tilde) == want


def test_imagenet_older_build_is_used(imagenet_config, tmp_path):
    """A build of imagenet2012 5.0.0 (the same train/validation) is found, not rebuilt."""
    want = pipeline.dataset_info(imagenet_config)  # builds it (manual_dir) if needed
    src = pathlib.Path(imagenet_config.data.data_dir) / "imagenet2012"
    (version,) = [p for p in src.iterdir() if p.is_dir()]
    shutil.copytree(version, tmp_path / "imagenet2012" / "5.0.0")
    old = make_config(data_dir=str(tmp_path), image_size=16, eval_resize=20)
    assert pipeline.dataset_info(old) == want
    ids, _, _ = collect_eval(old, 4, 1)
    assert sorted(ids) == list(range(1, 12))


def test_decoding_matches_pil_rgb_conversion(tmp_path):
    """Alpha dropped, grayscale replicated, as PIL's convert("RGB") that torchvision uses."""
    from faq_jax.data import preprocess  # noqa: PLC0415 - loads TensorFlow

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (7, 9, 4), dtype=np.uint8), "RGBA")
    cases = {"rgba.webp": rgba, "rgba.png": rgba, "la.png": rgba.convert("LA"),
             "gray.webp": rgba.convert("L"), "palette.png": rgba.convert("RGB").convert("P")}
    for name, image in cases.items():
        path = tmp_path / name
        image.save(path, lossless=True) if name.endswith(".webp") else image.save(path)
        got = preprocess._decode_full(preprocess.tf.io.read_file(str(path))).numpy()
        np.testing.assert_array_equal(got, np.asarray(Image.open(path).convert("RGB")), name)


def test_palette_bmp_is_refused_when_listing(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        id_image(1).save(tmp_path / cls / "x.bmp")  # 24-bit: fine
    id_image(2).convert("P").save(tmp_path / "b" / "y.bmp")  # 8-bit palette
    with pytest.raises(ValueError, match="palette BMP.*y.bmp"):
        folder.list_image_folder(str(tmp_path))


def test_digits_augmentation_is_the_same_for_any_process_count():
    c = demo.get_config()
    c.data.augment = "cifar"  # for digits: a random shift of up to 1 pixel
    one = next(pipeline.train_batches(c, local_batch_size=8))
    two = [next(pipeline.train_batches(c, local_batch_size=4, process_index=p,
                                             process_count=2)) for p in (0, 1)]
    for k in ("image", "label"):
        np.testing.assert_array_equal(one[k], np.concatenate([t[k] for t in two]))
    plain = demo.get_config()
    assert not np.array_equal(next(pipeline.train_batches(
        plain, local_batch_size=8))["image"], one["image"])  # the shifts did something


def test_labels_beyond_num_classes_are_refused(folder_config, imagenet_config):
    """Labels are checked where they are known before training: the folder's classes (the
    largest named), the digits, TFDS ImageNet's metadata."""
    for config, ok, message in (
            (folder_config, 3, r"num_classes=2, but the train split of folder \(.*train\) has "
             r"label 2 \('fox'\).*--config.num_classes=3"),
            (make_config(name="digits", image_size=8), 10, r"digits has label 9"),
            (imagenet_config, 1000, r"imagenet2012 \(its metadata\) has label 999")):
        config = ml_collections.ConfigDict(config.to_dict())
        config.num_classes = ok
        pipeline.check_labels(config)
        config.num_classes = 2
        with pytest.raises(ValueError, match=message):
            pipeline.check_labels(config)
