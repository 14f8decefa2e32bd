"""CIFAR-10 from any of its forms: the JPEG archives, the official python and binary archives,
and a prepared TFDS ``cifar10``.

The python (``cifar-10-python.tar.gz``) and binary (``cifar-10-binary.tar.gz``) archives and
TFDS hold the same lossless pixels, labels and order (``data_batch_1..5``, then
``test_batch``; TFDS examples are put back into that order by their ``id``), read here into
uint8 arrays (:class:`ArraySplit`). The JPEG archives are extracted and listed as image
folders (:class:`faq_jax.data.folder.FileSplit`). Either kind goes through the same
augmentation and normalisation in :mod:`faq_jax.data.pipeline`. No TensorFlow here except
for the TFDS source.

TFDS's builder downloads ``https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz`` (the
*binary* format). Offline, TFDS takes that file from a ``manual_dir`` instead
(``DownloadConfig(manual_dir=...)``), after checking its size and sha256 against the ones
TFDS registers for the URL. Usage, once, on storage every host can read::

    python -m faq_jax.data cifar10 --data_dir /data/tfds                        # downloads
    python -m faq_jax.data cifar10 --data_dir /data/tfds --manual_dir /data/cifar  # offline

then set ``config.data.source=tfds`` and ``config.data.data_dir`` to the same folder.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import tarfile
import zlib
from typing import Any, NamedTuple

import numpy as np

from faq_jax import lazy_imports
from faq_jax.data import folder

# Label order of every CIFAR-10 form (alphabetical, so also the JPEG archives' folder order).
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
NUM_TRAIN, NUM_TEST = 50_000, 10_000
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
# Top folder of each archive layout.
FORMATS = {"cifar-10-batches-py": "python", "cifar-10-batches-bin": "binary",
           "train": "jpeg", "test": "jpeg_test"}
SOURCES = ("archive", "tfds")  # config.data.source
EVAL_SPLITS = ("val", "test")  # config.data.eval_split
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE = "cifar-10-binary.tar.gz"  # what TFDS builds cifar10 from
_RECORD = 1 + 3072  # Binary format: one label byte, then the R, G, B planes (32x32 each).

Split = Any  # folder.FileSplit | ArraySplit


class ArraySplit(NamedTuple):
    """One split of a lossless CIFAR-10 form, in the archive's order."""

    images: np.ndarray  # [N, 32, 32, 3] uint8, HWC.
    labels: np.ndarray  # [N] int32.
    classes: tuple[str, ...]


def check_choices(source: str, eval_split: str) -> None:
    """Raises ValueError unless ``source`` and ``eval_split`` are known values."""
    if source not in SOURCES:
        raise ValueError(f"config.data.source={source!r}: must be one of {SOURCES}.")
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"config.data.eval_split={eval_split!r}: must be one of {EVAL_SPLITS}.")


def check_archives(data: Any) -> None:
    """Checks ``config.data``'s CIFAR-10 archives before any compute (no TensorFlow).

    Raises:
      ValueError: naming the field and the fix, when a path is empty or missing, a file
        is not a readable tar archive, or its layout is not the one the field needs.
    """
    check_choices(data.source, data.eval_split)
    if data.eval_split == "val" and data.val_per_class < 1:
        raise ValueError(
            f"config.data.val_per_class={data.val_per_class}: leaves no validation images; "
            "set it > 0, or evaluate on the test set with config.data.eval_split='test'.")
    if data.source != "archive":
        return
    archive = os.path.expanduser(data.archive)
    fix = ("set config.data.archive to cifar10-jpeg.tar.gz (faq_jax.config.defaults."
           "shared_cifar10_archive), cifar-10-python.tar.gz or cifar-10-binary.tar.gz, or use "
           "config.data.source='tfds'")
    try:
        fmt = archive_format(archive)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"{e} Fix: {fix}.") from e
    if fmt == "jpeg_test":
        raise _bad("config.data.archive", archive, f"the JPEG test archive; {fix}, and "
                   "config.data.test_archive to this file.")
    if fmt == "jpeg" and data.eval_split == "test":
        test = os.path.expanduser(data.test_archive)
        fix = ("set config.data.test_archive to cifar10-test-jpeg.tar.gz (faq_jax.config.defaults."
               "shared_cifar10_test_archive), or evaluate on config.data.eval_split='val'")
        try:
            fmt = archive_format(test, "config.data.test_archive")
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"{e} Fix: {fix}.") from e
        if fmt != "jpeg_test":
            raise _bad("config.data.test_archive", test,
                       f"a {fmt} archive, not the JPEG test archive (test/<class>/NNNN.jpg); "
                       f"{fix}.")


def _bad(field: str, path: str, why: str) -> ValueError:
    return ValueError(f"{field}={path!r}: {why}")


def archive_format(path: str, field: str = "config.data.archive") -> str:
    """Layout of a CIFAR-10 archive, from its first member: 'python', 'binary', 'jpeg'
    (``train/<class>/``) or 'jpeg_test' (``test/<class>/``).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a readable tar archive, or not a CIFAR-10 layout (naming ``field``).
    """
    if not path:
        raise ValueError(f"{field} is empty: set it to a CIFAR-10 archive's path.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{field}={path!r}: no such file.")
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                top = member.name.lstrip("./").split("/", 1)[0]
                if top in FORMATS:
                    return FORMATS[top]
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise _bad(field, path, f"cannot read the archive ({type(e).__name__}: {e}); it is "
                   "truncated or not a tar archive: download or copy it again.") from e
    raise _bad(field, path, "not a CIFAR-10 archive: expected a top folder "
               f"{' or '.join(f'{k}/' for k in FORMATS)} (cifar-10-python.tar.gz, "
               "cifar-10-binary.tar.gz, cifar10-jpeg.tar.gz or cifar10-test-jpeg.tar.gz).")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of lists, bytes and NumPy arrays) and nothing else."""

    _ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def _to_hwc(rows: np.ndarray) -> np.ndarray:
    """[N, 3072] channel-major rows (R, G, B planes of 32x32) -> [N, 32, 32, 3]."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _python_batch(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _BatchUnpickler(io.BytesIO(payload), encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError("not a CIFAR-10 batch (a dict with b'data' and b'labels')")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"b'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]")
    if labels.shape != (len(data),):
        raise ValueError(f"{labels.shape} labels for {len(data)} images")
    return _to_hwc(data), labels


def _binary_batch(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
    if len(payload) % _RECORD:
        raise ValueError(f"{len(payload)} bytes is not a whole number of {_RECORD}-byte records")
    records = np.frombuffer(payload, np.uint8).reshape(-1, _RECORD)
    return _to_hwc(records[:, 1:]), records[:, 0]


def _class_names(payload: bytes, fmt: str) -> tuple[str, ...]:
    if fmt == "python":
        meta = _BatchUnpickler(io.BytesIO(payload), encoding="bytes").load()
        names = meta[b"label_names"]
    else:
        names = payload.split(b"\n")
    return tuple(n.decode().strip() for n in names if n.strip())


def read_archive(path: str, field: str = "config.data.archive") -> tuple[ArraySplit, ArraySplit]:
    """Train (``data_batch_1..5`` in order) and test (``test_batch``) of the official python
    or binary CIFAR-10 archive.

    Raises:
      ValueError: naming ``field``, the file and the member for a truncated or corrupt
        archive, a missing member or a batch that is not CIFAR-10.
    """
    fmt = archive_format(path, field)
    if fmt not in ("python", "binary"):
        raise _bad(field, path, f"a {fmt} archive, expected cifar-10-python.tar.gz or "
                   "cifar-10-binary.tar.gz")
    top = next(k for k, v in FORMATS.items() if v == fmt)
    suffix, meta = (".bin", "batches.meta.txt") if fmt == "binary" else ("", "batches.meta")
    wanted = {f"{top}/{n}{suffix}" for n in (*TRAIN_BATCHES, TEST_BATCH)} | {f"{top}/{meta}"}
    payloads, member = {}, "<header>"
    try:
        with tarfile.open(path) as tar:
            for info in tar:
                member = info.name.lstrip("./")
                if member in wanted:
                    payloads[member] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise _bad(field, path, f"cannot read the archive at member {member} "
                   f"({type(e).__name__}: {e}); it is truncated or corrupt: download or copy "
                   "it again.") from e
    missing = sorted(wanted - set(payloads))
    if missing:
        raise _bad(field, path, f"lacks {', '.join(missing)}: not a complete CIFAR-10 archive.")
    parse = _python_batch if fmt == "python" else _binary_batch
    splits = []
    for names in (TRAIN_BATCHES, (TEST_BATCH,)):
        images, labels = [], []
        for name in names:
            member = f"{top}/{name}{suffix}"
            try:
                x, y = parse(payloads[member])
            except Exception as e:  # noqa: BLE001 - any unpickling error: name the member.
                raise _bad(field, path, f"{member} is not a CIFAR-10 batch "
                           f"({type(e).__name__}: {e})") from e
            if y.size and not 0 <= y.min() <= y.max() < len(CLASSES):
                raise _bad(field, path, f"{member} has labels outside 0..9")
            images.append(x)
            labels.append(y.astype(np.int32))
        splits.append(ArraySplit(np.concatenate(images), np.concatenate(labels), CLASSES))
    names = _class_names(payloads[f"{top}/{meta}"], fmt)
    if names != CLASSES:
        raise _bad(field, path, f"{top}/{meta} names the classes {names}, not CIFAR-10's.")
    return splits[0], splits[1]


def _jpeg_test(test_archive: str, cache_dir: str, classes: tuple[str, ...]) -> Split:
    field = "config.data.test_archive"
    if not test_archive:
        raise ValueError(
            f"{field} is empty, and config.data.eval_split='test' with the JPEG training "
            "archive needs it: set it to cifar10-test-jpeg.tar.gz "
            "(faq_jax.config.defaults.shared_cifar10_test_archive), or use eval_split='val'.")
    fmt = archive_format(test_archive, field)
    if fmt != "jpeg_test":
        raise _bad(field, test_archive, f"a {fmt} archive; expected the JPEG test archive "
                   "cifar10-test-jpeg.tar.gz (test/<class>/NNNN.jpg).")
    root = os.path.join(folder.extract_once(test_archive, cache_dir, field), "test")
    test = folder.list_image_folder(root, classes=classes)
    if set(test.labels.tolist()) != set(range(len(classes))):
        raise _bad(field, test_archive, "some CIFAR-10 classes have no test image.")
    return test


def splits(*, source: str, archive: str, test_archive: str, cache_dir: str, data_dir: str,
           manual_dir: str, val_per_class: int, eval_split: str) -> tuple[Split, Split]:
    """CIFAR-10's ``(train, eval)`` splits.

    Args:
      source: "archive" (``archive`` in any format, detected by content) or "tfds".
      archive: cifar10-jpeg.tar.gz, cifar-10-python.tar.gz or cifar-10-binary.tar.gz.
      test_archive: cifar10-test-jpeg.tar.gz (JPEG ``archive`` and ``eval_split='test'``).
      cache_dir: where JPEG archives are extracted ("" = ~/.cache/faq_jax).
      data_dir: TFDS data_dir (source="tfds").
      manual_dir: folder with cifar-10-binary.tar.gz to build TFDS cifar10 from, offline.
      val_per_class: eval_split="val": the last N training images of each class.
      eval_split: "val" (held out of the training images) or "test" (the 10,000 test
        images; all training images train).
    """
    fmt = "tfds" if source == "tfds" else archive_format(archive)
    if fmt == "tfds":
        train, test = tfds_arrays(data_dir, manual_dir)
    elif fmt == "jpeg":
        root = os.path.join(folder.extract_once(archive, cache_dir), "train")
        train = folder.list_image_folder(root)
        if train.classes != CLASSES:
            raise _bad("config.data.archive", archive, f"classes {train.classes}, not CIFAR-10's")
        test = _jpeg_test(test_archive, cache_dir, train.classes) if eval_split == "test" else None
    elif fmt in ("python", "binary"):
        train, test = read_archive(archive)
    else:
        raise _bad("config.data.archive", archive, "the JPEG *test* archive: set "
                   "config.data.archive to the training archive (cifar10-jpeg.tar.gz) and "
                   "config.data.test_archive to this one.")
    if eval_split == "test":
        return train, test
    return folder.split_last_per_class(train, val_per_class)


# ---- TFDS cifar10 ----

def tfds_builder(data_dir: str = "", manual_dir: str = "", download: bool = False) -> Any:
    """The prepared TFDS ``cifar10`` builder, built first from ``manual_dir`` if needed.

    Args:
      data_dir: TFDS data_dir ("" = the TFDS default).
      manual_dir: folder holding the official ``cifar-10-binary.tar.gz``.
      download: if not prepared and ``manual_dir`` is empty, download (needs internet).

    Raises:
      FileNotFoundError: not prepared, and no archive to build it from (and no download).
    """
    tfds = lazy_imports.tensorflow_datasets()
    data_dir = os.path.expanduser(data_dir) if data_dir else ""
    manual_dir = os.path.expanduser(manual_dir) if manual_dir else ""
    cifar = tfds.builder("cifar10", data_dir=data_dir or None)
    if cifar.is_prepared():
        return cifar
    if manual_dir and os.path.isfile(os.path.join(manual_dir, ARCHIVE)):
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    elif download:
        config = None
    else:
        where = f"manual_dir={manual_dir!r}" if manual_dir else "config.data.manual_dir (empty)"
        raise FileNotFoundError(
            f"TFDS 'cifar10' is not prepared in config.data.data_dir="
            f"{data_dir or '<TFDS default>'!r}, and {ARCHIVE} is not in {where}. Either run "
            "`python -m faq_jax.data cifar10 --data_dir DIR` on a machine with internet "
            f"(or download {URL} into a folder and add `--manual_dir FOLDER`), then point "
            "config.data.data_dir at DIR; or read an archive directly: "
            "config.data.source='archive', config.data.archive=cifar-10-python.tar.gz, "
            "cifar-10-binary.tar.gz or cifar10-jpeg.tar.gz.")
    cifar.download_and_prepare(download_config=config)
    return cifar


def tfds_arrays(data_dir: str = "", manual_dir: str = "") -> tuple[ArraySplit, ...]:
    """``(train, test)`` of TFDS ``cifar10`` as uint8 arrays, in the archive's order.

    TFDS stores the examples shuffled; its ``id`` (``train_00042``: the 43rd image of
    ``data_batch_1..5``) puts them back, so the splits equal the archives' arrays.
    """
    tfds = lazy_imports.tensorflow_datasets()
    cifar = tfds_builder(data_dir, manual_dir)
    names = tuple(cifar.info.features["label"].names)
    if names != CLASSES:
        raise ValueError(f"TFDS cifar10 in {data_dir!r} names the classes {names}.")
    out = []
    for split in ("train", "test"):
        ds = tfds.as_numpy(cifar.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        order = np.argsort([int(i.rsplit(b"_", 1)[1]) for i in ds["id"]], kind="stable")
        out.append(ArraySplit(
            ds["image"][order], ds["label"][order].astype(np.int32), names))
    return tuple(out)


def main(argv: list[str] | None = None) -> None:
    """``python -m faq_jax.data cifar10 [--data_dir DIR] [--manual_dir DIR]``: prepares TFDS
    ``cifar10`` once (downloading it, or offline from ``cifar-10-binary.tar.gz``)."""
    parser = argparse.ArgumentParser(prog="python -m faq_jax.data cifar10",
                                     description="Prepare TFDS cifar10 (once).")
    parser.add_argument("--data_dir", default="", help="TFDS data_dir (default: TFDS's)")
    parser.add_argument("--manual_dir", default="",
                        help=f"folder with {ARCHIVE} (offline); empty: download it")
    args = parser.parse_args(argv)
    info = tfds_builder(args.data_dir, args.manual_dir, download=True).info
    print({str(k): v.num_examples for k, v in info.splits.items()})
