"""ImageNet (ILSVRC2012) through TFDS ``imagenet2012``: its one-time build from the two
official archives, and the encoded records the pipeline decodes.

Usage (once, on storage every host can read)::

    python -m faq_jax.data imagenet2012 --manual_dir /data/ilsvrc2012 --data_dir /data/tfds

then set ``config.data.manual_dir`` and ``config.data.data_dir`` to the same folders.
"""

from __future__ import annotations

import argparse
import functools
import os
from typing import Any

from faq_jax import lazy_imports

ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def missing_archives_message(manual_dir: str, data_dir: str) -> str:
    """Explains where the ImageNet archives go and how to obtain them."""
    where = f"manual_dir={manual_dir!r}" if manual_dir else "config.data.manual_dir (empty)"
    return (
        f"TFDS 'imagenet2012' is not prepared in data_dir={data_dir or '<TFDS default>'!r}, "
        f"and it cannot be built: expected the files {' and '.join(ARCHIVES)} in {where}. "
        "ImageNet cannot be downloaded automatically: register at "
        "https://image-net.org/download-images, download both ILSVRC2012 archives (train "
        "138 GB, validation 6.3 GB) into one folder and point config.data.manual_dir there "
        "(or run `python -m faq_jax.data imagenet2012 --manual_dir DIR --data_dir DIR` once)."
    )


def builder(data_dir: str = "", manual_dir: str = "") -> Any:
    """Returns the prepared TFDS ``imagenet2012`` builder, building it first if needed.

    Args:
      data_dir: TFDS data_dir ("" = the TFDS default).
      manual_dir: folder holding ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar``.

    Raises:
      FileNotFoundError: the dataset is not prepared and an archive is missing.
    """
    tfds = lazy_imports.tensorflow_datasets()
    data_dir = os.path.expanduser(data_dir) if data_dir else ""  # "--x=~/..." is not expanded
    imagenet = tfds.builder("imagenet2012", data_dir=data_dir or None)
    if imagenet.is_prepared():
        return imagenet
    for version in imagenet.versions:  # an older build (5.0.0 differs only in its test split)
        if str(version) == str(imagenet.version):
            continue
        older = tfds.builder(f"imagenet2012:{version}", data_dir=data_dir or None)
        if older.is_prepared():
            return older
    manual_dir = os.path.expanduser(manual_dir) if manual_dir else ""
    if not manual_dir or not all(os.path.isfile(os.path.join(manual_dir, f)) for f in ARCHIVES):
        raise FileNotFoundError(missing_archives_message(manual_dir, data_dir))
    imagenet.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return imagenet


@functools.lru_cache(maxsize=4)
def cached_builder(data_dir: str, manual_dir: str) -> Any:
    """:func:`builder`, once per (data_dir, manual_dir) in a process."""
    return builder(data_dir, manual_dir)


def train_records(data_dir: str, manual_dir: str, split: str, seed: int,
                  shuffle_buffer: int, num_examples: int) -> Any:
    """tf.data of (image bytes, label, [2] int64 seed) of the shuffled TFDS slice ``split``.

    Files and examples are shuffled with ``seed``; the per-example seed is ``(seed, i)``
    for the i-th example, so a resumed epoch (``skip`` before decoding) redraws the same
    augmentations.
    """
    tf, tfds = lazy_imports.tensorflow(), lazy_imports.tensorflow_datasets()
    ds = cached_builder(data_dir, manual_dir).as_dataset(
        split=split,
        shuffle_files=True,
        read_config=tfds.ReadConfig(shuffle_seed=seed, skip_prefetch=True),
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    ds = ds.shuffle(shuffle_buffer, seed=seed).take(num_examples)
    return ds.enumerate().map(
        lambda i, ex: (ex["image"], ex["label"], tf.stack([tf.constant(seed, tf.int64), i])))


def eval_records(data_dir: str, manual_dir: str, split: str) -> Any:
    """tf.data of (image bytes, label) of the TFDS slice ``split``, in order."""
    tfds = lazy_imports.tensorflow_datasets()
    ds = cached_builder(data_dir, manual_dir).as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: (ex["image"], ex["label"]))


def main(argv: list[str] | None = None) -> None:
    """``python -m faq_jax.data imagenet2012 --manual_dir DIR [--data_dir DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m faq_jax.data imagenet2012",
                                     description="Build TFDS imagenet2012 from the ILSVRC2012 "
                                     "archives (once).")
    parser.add_argument("--manual_dir", required=True, help="folder with the ILSVRC2012 tars")
    parser.add_argument("--data_dir", default="", help="TFDS data_dir (default: TFDS's)")
    args = parser.parse_args(argv)
    info = builder(args.data_dir, args.manual_dir).info
    print({str(k): v.num_examples for k, v in info.splits.items()})

