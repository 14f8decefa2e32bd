"""CIFAR-10 in all its forms, on miniature archives written here in the genuine layouts: the
official python archive (pickled batches), the binary archive (which TFDS's own builder
prepares, offline, into a real TFDS ``cifar10``), and the shared JPEG train/test archives."""

from __future__ import annotations

import io
import itertools
import os
import pickle
import tarfile

import ml_collections
import numpy as np
import pytest

from faq_jax.config import check as config_check
from faq_jax.config import defaults
from faq_jax.data import cifar10, pipeline

TRAIN_PER_BATCH, NUM_TEST = 4, 7  # 20 training images (2 per class), 7 test images.
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
JPEG_ARCHIVE = defaults.shared_cifar10_archive(__file__)
JPEG_TEST_ARCHIVE = defaults.shared_cifar10_test_archive(__file__)


def add_file(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def to_rows(images: np.ndarray) -> np.ndarray:
    """[N, 32, 32, 3] -> [N, 3072] channel-major rows (R plane, G plane, B plane)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def named(batches, test):
    """(file name, (images, labels)) of data_batch_1..5 and test_batch."""
    return [*zip(cifar10.TRAIN_BATCHES, batches, strict=True), ("test_batch", test)]


def write_python(path, batches, test) -> None:
    """cifar-10-python.tar.gz: protocol-2 pickles of dicts with bytes keys."""
    with tarfile.open(path, "w:gz") as tar:
        for name, (x, y) in named(batches, test):
            batch = {b"batch_label": f"{name} of 5".encode(), b"labels": [int(v) for v in y],
                     b"data": to_rows(x),
                     b"filenames": [f"img_{name}_{k}.png".encode() for k in range(len(y))]}
            add_file(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
        meta = {b"num_cases_per_batch": TRAIN_PER_BATCH, b"num_vis": 3072,
                b"label_names": [n.encode() for n in cifar10.CLASSES]}
        add_file(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        add_file(tar, "cifar-10-batches-py/readme.html", b"<html></html>")


def write_binary(path, batches, test) -> None:
    """cifar-10-binary.tar.gz: records of 1 label byte + 3072 pixel bytes."""
    with tarfile.open(path, "w:gz") as tar:
        for name, (x, y) in named(batches, test):
            records = np.concatenate([y.astype(np.uint8)[:, None], to_rows(x)], axis=1)
            add_file(tar, f"cifar-10-batches-bin/{name}.bin", records.tobytes())
        names = "\n".join(cifar10.CLASSES) + "\n\n"  # As the real file: blank lines.
        add_file(tar, "cifar-10-batches-bin/batches.meta.txt", names.encode())


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """Random images; every class twice in training, so val_per_class=1 holds out 10."""
    rng = np.random.default_rng(0)
    train_y = rng.permutation(np.repeat(np.arange(10), 2)).astype(np.int32)
    train_x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    test_y = rng.integers(0, 10, NUM_TEST).astype(np.int32)
    test_x = rng.integers(0, 256, (NUM_TEST, 32, 32, 3), dtype=np.uint8)
    batches = [(train_x[i : i + TRAIN_PER_BATCH], train_y[i : i + TRAIN_PER_BATCH])
               for i in range(0, 20, TRAIN_PER_BATCH)]
    root = tmp_path_factory.mktemp("cifar")
    write_python(root / "cifar-10-python.tar.gz", batches, (test_x, test_y))
    write_binary(root / "cifar-10-binary.tar.gz", batches, (test_x, test_y))
    return dict(root=root, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                python=str(root / "cifar-10-python.tar.gz"),
                binary=str(root / "cifar-10-binary.tar.gz"))


def cifar_config(**data) -> ml_collections.ConfigDict:
    d = defaults.data_config("cifar10")
    d.update(dict(image_size=32, eval_resize=32, augment="cifar", mean=MEAN, std=STD,
                  eval_split="test"))
    d.update(data)
    return ml_collections.ConfigDict(dict(seed=0, data=d))


def normalised(x: np.ndarray) -> np.ndarray:
    return ((x / 255.0 - np.array(MEAN)) / np.array(STD)).astype(np.float32)


def eval_arrays(config, batch_size=3, process_count=1):
    images, labels = [], []
    for p in range(process_count):
        for b in pipeline.eval_batches(config, local_batch_size=batch_size,
                                             process_index=p, process_count=process_count):
            images.append(b["image"][b["mask"]])
            labels.append(b["label"][b["mask"]])
    return np.concatenate(images), np.concatenate(labels)


def test_python_and_binary_archives_read_exactly(mini):
    for key, fmt in (("python", "python"), ("binary", "binary")):
        assert cifar10.archive_format(mini[key]) == fmt
        train, test = cifar10.read_archive(mini[key])
        np.testing.assert_array_equal(train.images, mini["train_x"])  # data_batch_1..5 order
        np.testing.assert_array_equal(train.labels, mini["train_y"])
        np.testing.assert_array_equal(test.images, mini["test_x"])
        np.testing.assert_array_equal(test.labels, mini["test_y"])
        assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
        assert train.classes == cifar10.CLASSES


def test_python_archive_through_the_pipeline(mini):
    config = cifar_config(archive=mini["python"])
    info = pipeline.dataset_info(config)
    assert info == pipeline.DatasetInfo(10, 20, NUM_TEST, (32, 32, 3))
    # Evaluation (no augmentation) is the normalised test_batch, in order, on 1 or 2 hosts.
    for process_count in (1, 2):
        images, labels = eval_arrays(config, process_count=process_count)
        np.testing.assert_allclose(images, normalised(mini["test_x"]), atol=1e-5)
        np.testing.assert_array_equal(labels, mini["test_y"])
    # Training without augmentation: one epoch (5 batches of 4) is all 20 images, once.
    plain = cifar_config(archive=mini["python"], augment="none")
    batches = list(itertools.islice(pipeline.train_batches(plain, local_batch_size=4), 5))
    want = normalised(mini["train_x"])
    seen = []
    for b in batches:
        for image, label in zip(b["image"], b["label"], strict=True):
            (k,) = np.nonzero(np.abs(want - image).max(axis=(1, 2, 3)) < 1e-5)[0]
            assert label == mini["train_y"][k]
            seen.append(k)
    assert sorted(seen) == list(range(20))
    # Augmented training resumes exactly across epoch boundaries.
    full = list(itertools.islice(pipeline.train_batches(config, local_batch_size=4), 8))
    resumed = pipeline.train_batches(config, local_batch_size=4, start_step=3)
    for want_batch in full[3:]:
        got = next(resumed)
        for key in ("image", "label"):
            np.testing.assert_array_equal(got[key], want_batch[key])
    assert not np.array_equal(full[0]["image"], batches[0]["image"])  # Crops/flips happened.


def test_validation_carve_and_formats_are_interchangeable(mini):
    python = cifar_config(archive=mini["python"], eval_split="val", val_per_class=1)
    binary = cifar_config(archive=mini["binary"], eval_split="val", val_per_class=1)
    assert pipeline.dataset_info(python) == pipeline.DatasetInfo(10, 10, 10,
                                                                           (32, 32, 3))
    held = [np.nonzero(mini["train_y"] == c)[0][-1] for c in range(10)]  # last of each class
    images, labels = eval_arrays(python)
    np.testing.assert_allclose(images, normalised(mini["train_x"][sorted(held)]), atol=1e-5)
    np.testing.assert_array_equal(labels, mini["train_y"][sorted(held)])
    # Same pixels, same order: the two archives give the same augmented batches.
    for a, b in zip(itertools.islice(pipeline.train_batches(python, local_batch_size=5), 3),
                    itertools.islice(pipeline.train_batches(binary, local_batch_size=5), 3),
                    strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_uint8_and_encoded_images_share_the_augmentation(mini):
    """The array route draws the same crops and flips as the JPEG route's decoded pixels."""
    from faq_jax.data import preprocess  # noqa: PLC0415 - loads TensorFlow

    tf = preprocess.tf
    image = mini["train_x"][0]
    png = tf.io.encode_png(image)  # Lossless: decodes to the same pixels.
    for k in range(4):
        seed = tf.constant([7, k], tf.int64)
        for fn in (lambda x, s: preprocess.train_cifar(x, s, 32),
                   lambda x, s: preprocess.train_imagenet(x, s, 24),
                   lambda x, s: preprocess.eval_image(x, 28, 32)):
            np.testing.assert_array_equal(fn(tf.constant(image), seed).numpy(),
                                          fn(png, seed).numpy())


def test_corrupt_archives_name_the_file(mini, tmp_path):
    payload = open(mini["python"], "rb").read()
    truncated = tmp_path / "truncated-python.tar.gz"
    truncated.write_bytes(payload[: len(payload) // 2])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not an archive" * 10)
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match="truncated") as error:
            pipeline.dataset_info(cifar_config(archive=str(path)))
        assert str(path) in str(error.value) and "config.data.archive" in str(error.value)
    # A batch that does not unpickle, and a missing batch: both named.
    bad_batch, missing = tmp_path / "bad-batch.tar.gz", tmp_path / "missing.tar.gz"
    with tarfile.open(mini["python"]) as src, tarfile.open(bad_batch, "w:gz") as bad, \
            tarfile.open(missing, "w:gz") as short:
        for member in src:
            data = src.extractfile(member).read()
            if member.name.endswith("data_batch_3"):
                add_file(bad, member.name, data[:100])
            else:
                add_file(bad, member.name, data)
            if not member.name.endswith("data_batch_5"):
                add_file(short, member.name, data)
    with pytest.raises(ValueError, match=f"{bad_batch}.*data_batch_3 is not a CIFAR-10 batch"):
        cifar10.read_archive(str(bad_batch))
    with pytest.raises(ValueError, match=f"{missing}.*lacks cifar-10-batches-py/data_batch_5"):
        pipeline.dataset_info(cifar_config(archive=str(missing)))


def test_config_check_names_field_and_fix(mini, tmp_path):
    c = defaults.cifar10_base(8, 8, mini["python"])
    c.init, c.eval_batch_size = "random", 512  # A multiple of the 8 test devices.
    assert config_check.validate(c)  # python archive, eval_split="val"
    c.data.eval_split = "test"
    config_check.validate(c)  # test_batch is inside the archive: no test_archive needed
    c.data.archive = str(tmp_path / "nope.tar.gz")
    with pytest.raises(ValueError, match=r"config\.data\.archive=.*nope.*no such file.*Fix"):
        config_check.validate(c)
    c.data.eval_split, c.data.val_per_class = "val", 0
    c.data.archive = mini["python"]
    with pytest.raises(ValueError, match=r"val_per_class=0.*eval_split='test'"):
        config_check.validate(c)
    c.data.source = "hdf5"
    with pytest.raises(ValueError, match=r"config\.data\.source='hdf5'"):
        config_check.validate(c)


@pytest.mark.skipif(not os.path.exists(JPEG_TEST_ARCHIVE), reason="CIFAR-10 archives missing")
def test_jpeg_test_split():
    data = dict(archive=JPEG_ARCHIVE, test_archive=JPEG_TEST_ARCHIVE, val_per_class=0)
    config = cifar_config(**data)
    cifar10.check_archives(config.data)
    info = pipeline.dataset_info(config)
    assert info == pipeline.DatasetInfo(10, 50_000, 10_000, (32, 32, 3))
    _, test = pipeline._splits(config.data)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.paths[0].endswith(os.path.join("test", "airplane", "0000.jpg"))
    assert pipeline.num_eval_batches(config, local_batch_size=512, process_count=3) == 7
    batch = next(pipeline.eval_batches(config, local_batch_size=8))
    assert batch["mask"].all() and (batch["label"] == 0).all()
    # The test archive's errors name config.data.test_archive and the fix.
    for wrong, why in (("", "is empty"), (JPEG_ARCHIVE, "not the JPEG test archive"),
                       ("/no/such.tar.gz", "no such file")):
        bad = cifar_config(**{**data, "test_archive": wrong})
        with pytest.raises(ValueError, match=f"config.data.test_archive.*{why}.*eval_split='val'"):
            cifar10.check_archives(bad.data)
    with pytest.raises(ValueError, match="config.data.archive.*JPEG test archive"):
        cifar10.check_archives(cifar_config(archive=JPEG_TEST_ARCHIVE).data)


def test_tfds_cifar10_prepared_offline_from_a_miniature_binary_archive(mini, tmp_path):
    """TFDS's own builder prepares cifar10 from the miniature binary archive without network:
    the archive sits in TFDS's download cache under the name TFDS gives the official URL's
    download (url + registered sha256), which TFDS trusts without re-hashing."""
    from faq_jax import lazy_imports  # noqa: PLC0415 - loads TensorFlow

    tfds = lazy_imports.tensorflow_datasets()
    from tensorflow_datasets.core.download import download_manager  # noqa: PLC0415
    from tensorflow_datasets.core.download import resource as resource_lib  # noqa: PLC0415

    data_dir = tmp_path / "tfds"
    config = cifar_config(source="tfds", data_dir=str(data_dir))
    with pytest.raises(FileNotFoundError, match="not prepared.*faq_jax.data cifar10"):
        pipeline.dataset_info(config)
    # manual_dir: TFDS checks the file against the official archive's size and sha256.
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / cifar10.ARCHIVE).write_bytes(open(mini["binary"], "rb").read())
    with pytest.raises(download_manager.NonMatchingChecksumError, match=str(manual)):
        cifar10.tfds_builder(str(tmp_path / "tfds_manual"), str(manual))
    # The download cache: what a finished download of the official URL leaves behind.
    url_info = tfds.builder("cifar10").url_infos[cifar10.URL]
    cached = tfds.core.Path(data_dir, "downloads", "cifar10",
                            resource_lib.get_dl_fname(cifar10.URL, url_info.checksum))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(open(mini["binary"], "rb").read())
    resource_lib.write_info_file(url=cifar10.URL, path=cached, dataset_name="cifar10",
                                 original_fname=cifar10.ARCHIVE, url_info=url_info)
    cifar10.main(["--data_dir", str(data_dir)])
    assert pipeline.dataset_info(config) == pipeline.DatasetInfo(
        10, 20, NUM_TEST, (32, 32, 3))
    train, test = pipeline._splits(config.data)  # Back in data_batch_1..5 order.
    np.testing.assert_array_equal(train.images, mini["train_x"])
    np.testing.assert_array_equal(train.labels, mini["train_y"])
    images, labels = eval_arrays(config)
    np.testing.assert_allclose(images, normalised(mini["test_x"]), atol=1e-5)
    np.testing.assert_array_equal(labels, mini["test_y"])
    archive = cifar_config(archive=mini["python"])
    for a, b in zip(itertools.islice(pipeline.train_batches(config, local_batch_size=4), 6),
                    itertools.islice(pipeline.train_batches(archive, local_batch_size=4), 6),
                    strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
