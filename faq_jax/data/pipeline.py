"""Per-process NumPy batches for training and exact evaluation.

Datasets (``config.data.name``):
  * ``imagenet2012``: TFDS, built from the two ILSVRC2012 tars in ``manual_dir``;
  * ``folder``: torchvision ``ImageFolder`` layout (``train_dir``, ``eval_dir``);
  * ``cifar10``: CIFAR-10 from ``archive`` (the JPEG archive, read as a folder, or the
    official python/binary archive, read as uint8 arrays; detected by content) or from a
    prepared TFDS ``cifar10`` (``source="tfds"``); evaluation on the last ``val_per_class``
    training images of each class (``eval_split="val"``) or on the test set ("test");
  * ``digits``: scikit-learn's embedded 8x8 digits; pure NumPy, never imports TensorFlow.

Order. The training order is a function of (seed, epoch, process_index) only, and every
example's augmentation is drawn from a stateless seed keyed by its position in the epoch,
so ``train_batches(start_step=s)`` yields exactly what an uninterrupted iterator yields
from step ``s``. Folder, CIFAR-10 and digits datasets use one permutation per epoch shared by
all processes (global batch k = the same examples for any process_count), resumed by
slicing an index array; TFDS reads this process's slice ``train[a:b]``, shuffles it with a seeded
buffer and resumes with ``skip`` before any decoding.

Evaluation is exact: process p reads examples ``[p*N//P, (p+1)*N//P)``; every process
yields ``num_eval_batches`` batches, padded with ``mask=False`` examples.

Loaders (``config.data.loader``): ``"tf"`` (tf.data; every dataset) or ``"numpy"``
(:mod:`faq_jax.data.numpy_loader`: CIFAR-10 archives and folders of images at the model's
size, without TensorFlow; the same evaluation batches and training order, its own crop/flip
draws). Digits are always NumPy. TensorFlow is imported lazily (through
:mod:`faq_jax.lazy_imports`) by the tf loader: :mod:`faq_jax.data.preprocess` and
:mod:`faq_jax.data.imagenet` only inside functions.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from faq_jax.data import cifar10, digits, folder, imagenet, numpy_loader

Batch = dict[str, np.ndarray]

_NAMES = ("imagenet2012", "folder", "cifar10", "digits")
_AUGMENTS = ("imagenet", "cifar", "none")
_LOADERS = ("tf", "numpy")


class DatasetInfo(NamedTuple):
    """Sizes of a dataset, as the trainer needs them."""

    num_classes: int
    num_train: int  # Examples in the training split (whole split, all processes).
    num_eval: int  # Examples in the eval split.
    image_shape: tuple[int, int, int]  # (H, W, C) the model sees.


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """``[start, end)`` of process ``process_index``'s contiguous shard (sizes differ by <= 1)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count}).")
    return (
        num_examples * process_index // process_count,
        num_examples * (process_index + 1) // process_count,
    )


def tfds_split_spec(split: str, num_examples: int, process_index: int, process_count: int) -> str:
    """TFDS slice of ``split`` this process reads, e.g. ``'validation[25000:50000]'``."""
    start, end = shard_bounds(num_examples, process_index, process_count)
    return f"{split}[{start}:{end}]"


def _seed(*values: int) -> int:
    """A 31-bit integer mixed from ``values`` (stable across runs and platforms)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0] >> 1)


def _np_dtype(data: ml_collections.ConfigDict) -> Any:
    if data.dtype == "float32":
        return np.float32
    if data.dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    raise ValueError(f"config.data.dtype must be 'float32' or 'bfloat16', got {data.dtype!r}.")


def _check(data: ml_collections.ConfigDict) -> None:
    if data.name not in _NAMES:
        raise ValueError(f"config.data.name must be one of {_NAMES}, got {data.name!r}.")
    if data.augment not in _AUGMENTS:
        raise ValueError(f"config.data.augment must be one of {_AUGMENTS}, got {data.augment!r}.")
    if data.name == "cifar10":
        cifar10.check_choices(data.source, data.eval_split)
    if data.name != "digits" and data.eval_resize < data.image_size:
        raise ValueError(
            f"config.data.eval_resize={data.eval_resize} < image_size={data.image_size}."
        )
    _check_loader(data)


def _loader(data: ml_collections.ConfigDict) -> str:
    """``config.data.loader``; configs recorded before the field existed read with tf."""
    return data.get("loader", "tf")


def _check_loader(data: ml_collections.ConfigDict) -> None:
    """The numpy loader serves CIFAR-10 archives and folders at the model's size."""
    loader = _loader(data)
    if loader not in _LOADERS:
        raise ValueError(f"config.data.loader must be one of {_LOADERS}, got {loader!r}.")
    if loader == "tf" or data.name == "digits":
        return
    fix = " Use config.data.loader='tf' (needs TensorFlow)."
    if data.name == "imagenet2012" or (data.name == "cifar10" and data.source == "tfds"):
        raise ValueError(f"config.data.loader='numpy' reads archives and folders, not TFDS "
                         f"({data.name}).{fix}")
    if data.augment == "imagenet":
        raise ValueError("config.data.loader='numpy' has the 'cifar' and 'none' augmentations, "
                         f"not 'imagenet' (RandomResizedCrop).{fix}")
    if data.eval_resize != data.image_size:
        raise ValueError(f"config.data.loader='numpy' does not resize: eval_resize="
                         f"{data.eval_resize} must equal image_size={data.image_size}.{fix}")


# ---------------------------------------------------------------------------------------------
# Dataset metadata.


@functools.lru_cache(maxsize=8)
def _cached_splits(name: str, train_dir: str, eval_dir: str, **cifar: Any) -> tuple[Any, Any]:
    if name == "cifar10":
        return cifar10.splits(**cifar)
    train = folder.list_image_folder(train_dir)
    if not eval_dir:
        raise ValueError("config.data.eval_dir is empty: set it to the evaluation folder.")
    return train, folder.list_image_folder(eval_dir, classes=train.classes)


def _expand(path: str) -> str:
    """``~`` expanded: shells leave it alone inside ``--config.data.x=~/...``."""
    return os.path.expanduser(path) if path else path


def _splits(data: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """``(train, eval)`` of a folder or CIFAR-10: each a ``folder.FileSplit`` (image files)
    or a ``cifar10.ArraySplit`` (uint8 images)."""
    cifar = {}
    if data.name == "cifar10":
        cifar = dict(
            source=data.source,
            archive=_expand(data.archive),
            test_archive=_expand(data.test_archive),
            cache_dir=_expand(data.cache_dir),
            data_dir=_expand(data.data_dir),
            manual_dir=_expand(data.manual_dir),
            val_per_class=data.val_per_class,
            eval_split=data.eval_split,
        )
    return _cached_splits(data.name, _expand(data.train_dir), _expand(data.eval_dir), **cifar)


@functools.lru_cache(maxsize=4)
def _in_memory(data_json: str) -> tuple[Any, Any]:
    data = ml_collections.ConfigDict(json.loads(data_json))
    train, evaluation = _splits(data)
    return (numpy_loader.in_memory(train, data.image_size),
            numpy_loader.in_memory(evaluation, data.image_size))


def _numpy_splits(data: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """``(train, eval)`` for the numpy loader: image folders small enough decoded once."""
    return _in_memory(data.to_json(sort_keys=True))


def _elements(split: Any, index: np.ndarray, seeds: np.ndarray | None = None,
              table: Any = None) -> Any:
    """tf.data dataset of (image, label[, seed]) for ``split[index]``: uint8 images of an
    ArraySplit (gathered from ``table``, its images as one tensor, when given), file
    contents of a FileSplit."""
    from faq_jax.data import preprocess  # noqa: PLC0415 - loads TensorFlow

    tf = preprocess.tf
    extra = () if seeds is None else (seeds,)
    if isinstance(split, cifar10.ArraySplit):
        if table is None:
            return tf.data.Dataset.from_tensor_slices(
                (split.images[index], split.labels[index], *extra))
        # Indices, not images: an epoch starts without copying the whole split.
        ds = tf.data.Dataset.from_tensor_slices((index, split.labels[index], *extra))
        return ds.map(lambda i, *rest: (tf.gather(table, i), *rest))
    ds = tf.data.Dataset.from_tensor_slices((split.paths[index], split.labels[index], *extra))
    return ds.map(lambda p, *rest: (tf.io.read_file(p), *rest))


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """Classes, split sizes and image shape of ``config.data``."""
    data = config.data
    _check(data)
    size = data.image_size
    if data.name == "digits":
        if size % 8:
            raise ValueError(f"digits: image_size must be a multiple of 8, got {size}.")
        d = digits.load()
        return DatasetInfo(10, len(d.train_x), len(d.eval_x), (size, size, 3))
    if data.name == "imagenet2012":
        builder = imagenet.cached_builder(data.data_dir, data.manual_dir)
        splits = builder.info.splits
        return DatasetInfo(
            builder.info.features["label"].num_classes,
            splits["train"].num_examples,
            splits["validation"].num_examples,
            (size, size, 3),
        )
    train, evaluation = _splits(data)
    return DatasetInfo(
        len(train.classes), len(train.labels), len(evaluation.labels), (size, size, 3)
    )


def check_labels(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError when the data holds a label >= ``config.num_classes`` (a model with
    fewer outputs would train and evaluate on it silently). Labels are read where they are
    in memory (digits, image folders, CIFAR-10); TFDS ImageNet gives its class count."""
    data, n = config.data, config.num_classes
    if data.name == "digits":
        d = digits.load()
        splits = {"train": d.train_y, "eval": d.eval_y}
        source, names = "scikit-learn's digits", None
    elif data.name == "imagenet2012":
        top = dataset_info(config).num_classes - 1
        splits, source, names = {"train": np.array([top])}, "TFDS imagenet2012 (its metadata)", None
    else:
        train, evaluation = _splits(data)
        splits = {"train": train.labels, "eval": evaluation.labels}
        where = data.train_dir if data.name == "folder" else (data.archive or data.data_dir)
        source, names = f"{data.name} ({where})", train.classes
    found = {split: int(labels.max()) for split, labels in splits.items() if len(labels)}
    if not found or max(found.values()) < n:
        return
    split, top = max(found.items(), key=lambda kv: kv[1])
    label = f"{top} ({names[top]!r})" if names and top < len(names) else f"{top}"
    raise ValueError(
        f"config.num_classes={n}, but the {split} split of {source} has label {label}: the "
        f"data has at least {top + 1} classes. Set --config.num_classes={top + 1} (a converted "
        "checkpoint's classifier must have as many outputs), or point config.data at the "
        "dataset you meant.")


def num_eval_batches(
    config: ml_collections.ConfigDict, *, local_batch_size: int, process_count: int
) -> int:
    """Eval batches every process yields: ``ceil(ceil(num_eval / P) / local_batch_size)``."""
    largest_shard = -(-dataset_info(config).num_eval // process_count)
    return -(-largest_shard // local_batch_size)


# ---------------------------------------------------------------------------------------------
# Training.


def _epoch_indices(
    n: int, seed: int, epoch: int, steps: int, local_batch: int, pi: int, pc: int
) -> tuple[np.ndarray, np.ndarray]:
    """(dataset index, position in the global epoch) of this process, both [steps, B]."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)[: steps * pc * local_batch]
    positions = np.arange(steps * pc * local_batch).reshape(steps, pc, local_batch)[:, pi]
    return perm.reshape(steps, pc, local_batch)[:, pi], positions


def train_batches(
    config: ml_collections.ConfigDict,
    *,
    local_batch_size: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    epoch_steps: Callable[[int], int] | None = None,
) -> Iterator[Batch]:
    """Infinite training batches of this process.

    Args:
      config: needs ``config.seed`` and ``config.data``.
      local_batch_size: examples per batch on this process.
      start_step: global batch index (in this stream) to resume from.
      process_index: this process (``jax.process_index()``).
      process_count: number of processes (``jax.process_count()``).
      epoch_steps: batches in epoch e (at most the full count below). Gradient accumulation
        passes ``steps_in_epoch(e) * accum(e)``, so that each optimizer epoch starts a fresh
        permutation and k micro-batches hold exactly the examples of one batch k times larger.

    Returns:
      Iterator of ``{"image": [B, H, W, 3] float32|bfloat16, "label": [B] int32}``; epoch e
      has ``epoch_steps(e)`` full batches, by default
      ``num_train // (local_batch_size * process_count)`` (the first ones of its permutation).
    """
    info = dataset_info(config)
    full = info.num_train // (local_batch_size * process_count)
    if full == 0:
        raise ValueError(
            f"Global batch {local_batch_size * process_count} exceeds the {info.num_train} "
            "training examples."
        )
    shard_bounds(0, process_index, process_count)  # Validates process_index.

    def steps(e: int) -> int:
        n = full if epoch_steps is None else epoch_steps(e)
        if not 0 < n <= full:
            raise ValueError(f"epoch {e} asks for {n} batches of "
                             f"{local_batch_size * process_count}; the data holds {full}")
        return n

    epoch, skip = 0, start_step
    while skip >= steps(epoch):
        skip -= steps(epoch)
        epoch += 1
    args = (config, info, steps, local_batch_size, process_index, process_count)
    if config.data.name == "digits":
        return _digits_train(*args, epoch, skip)
    if _loader(config.data) == "numpy":
        return numpy_loader.prefetch(_numpy_train(*args, epoch, skip))
    return _tf_train(*args, epoch, skip)


def calibration_batches(
    config: ml_collections.ConfigDict,
    *,
    local_batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """The first ``num_batches`` training batches (training augmentation), for calibration."""
    batches = train_batches(
        config,
        local_batch_size=local_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    return itertools.islice(batches, num_batches)


def _digits_train(config, info, steps, local_batch, pi, pc, epoch, skip) -> Iterator[Batch]:
    d = digits.load()
    dtype = _np_dtype(config.data)
    for e in itertools.count(epoch):
        indices, positions = _epoch_indices(info.num_train, config.seed, e, steps(e),
                                            local_batch, pi, pc)
        # Shifts by position in the global epoch: the same for any process count.
        shifts = np.random.default_rng([config.seed, e, 1]).integers(0, 3, (2, info.num_train))
        for step in range(skip if e == epoch else 0, steps(e)):
            x = d.train_x[indices[step]]
            if config.data.augment != "none":  # A random shift of up to 1 pixel.
                x = digits.random_shift(x, shifts[:, positions[step]])
            image = digits.to_model_images(x, config.data.image_size, dtype, d.mean, d.std)
            yield {"image": image, "label": d.train_y[indices[step]]}


def _numpy_train(config, info, steps, local_batch, pi, pc, epoch, skip) -> Iterator[Batch]:
    data = config.data
    split, _ = _numpy_splits(data)
    dtype = _np_dtype(data)
    for e in itertools.count(epoch):
        indices, positions = _epoch_indices(info.num_train, config.seed, e, steps(e),
                                            local_batch, pi, pc)
        augment = numpy_loader.Augmentation(config.seed, e, positions.size * pc) \
            if data.augment == "cifar" else None
        for step in range(skip if e == epoch else 0, steps(e)):
            image = numpy_loader.images(split, indices[step], data.image_size)
            if augment is not None:
                image = augment(image, positions[step])
            yield {"image": numpy_loader.normalize(image, data.mean, data.std, dtype),
                   "label": split.labels[indices[step]].astype(np.int32)}


def _train_fn(data: ml_collections.ConfigDict):
    from faq_jax.data import preprocess  # noqa: PLC0415 - loads TensorFlow

    if data.augment == "imagenet":
        return lambda image, seed: preprocess.train_imagenet(image, seed, data.image_size)
    if data.augment == "cifar":
        return lambda image, seed: preprocess.train_cifar(image, seed, data.image_size)
    return lambda image, seed: preprocess.eval_image(image, data.image_size, data.eval_resize)


def _finish(ds: Any, data: ml_collections.ConfigDict) -> Any:
    """Normalises whole batches (vectorised), casts to config dtype, prefetches."""
    from faq_jax.data import preprocess  # noqa: PLC0415 - loads TensorFlow

    tf = preprocess.tf
    dtype = tf.bfloat16 if data.dtype == "bfloat16" else tf.float32

    def normalize(batch):
        image = preprocess.normalize(batch["image"], data.mean, data.std)
        return {**batch, "image": tf.cast(image, dtype)}

    options = tf.data.Options()
    options.deterministic = True
    return ds.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2).with_options(options)


def _tf_train(config, info, steps, local_batch, pi, pc, epoch, skip) -> Iterator[Batch]:
    from faq_jax.data import preprocess  # noqa: PLC0415 - loads TensorFlow

    tf = preprocess.tf
    data = config.data
    _np_dtype(data)
    augment = _train_fn(data)
    size = data.image_size
    table = None
    if data.name != "imagenet2012":
        split, _ = _splits(data)
        if isinstance(split, cifar10.ArraySplit):
            table = tf.constant(split.images)  # Once: every epoch gathers from it.

    def example(image, label, seed):  # image: encoded bytes or uint8 [H, W, 3].
        image = tf.ensure_shape(augment(image, seed), [size, size, 3])
        return {"image": image, "label": tf.cast(label, tf.int32)}

    for e in itertools.count(epoch):
        first = skip if e == epoch else 0
        if data.name == "imagenet2012":
            seed = _seed(config.seed, e, pi)
            ds = imagenet.train_records(data.data_dir, data.manual_dir,
                                        tfds_split_spec("train", info.num_train, pi, pc), seed,
                                        data.shuffle_buffer, steps(e) * local_batch)
            ds = ds.skip(first * local_batch)  # Before decoding: only records are read.
            paths = None
        else:
            indices, positions = _epoch_indices(
                info.num_train, config.seed, e, steps(e), local_batch, pi, pc
            )
            indices, positions = indices[first:], positions[first:]
            paths = getattr(split, "paths", None)  # For error messages; None for arrays.
            paths = None if paths is None else paths[indices]
            seeds = np.stack([np.full(positions.size, _seed(config.seed, e)), positions.ravel()], 1)
            ds = _elements(split, indices.ravel(), seeds.astype(np.int64), table)
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)
        ds = _finish(ds.batch(local_batch, drop_remainder=True), data)
        yield from _numpy(ds, None if paths is None else list(paths))


def _numpy(ds: Any, batch_paths: list[np.ndarray] | None) -> Iterator[Batch]:
    """Iterates ``ds`` as NumPy; a decoding error names the file (batch_paths[k]: batch k)."""
    from faq_jax.data import preprocess  # noqa: PLC0415 - loads TensorFlow

    iterator = ds.as_numpy_iterator()
    for step in itertools.count():
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except preprocess.tf.errors.OpError as e:
            if batch_paths is None:
                raise
            # Deterministic order: the failing file is in this batch (or, defensively, later).
            for candidates in (batch_paths[step], np.concatenate(batch_paths[step:])):
                bad = folder.find_undecodable(candidates)
                if bad:
                    files = "; ".join(f"{path} ({why})" for path, why in bad)
                    raise ValueError(f"Cannot decode image file(s): {files}") from e
            raise
        yield batch


# ---------------------------------------------------------------------------------------------
# Evaluation.


def eval_batches(
    config: ml_collections.ConfigDict,
    *,
    local_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Finite, padded eval batches of this process's shard ``[p*N//P, (p+1)*N//P)``.

    Returns:
      Iterator of ``{"image", "label", "mask": [B] bool}`` (``mask`` is False on padding);
      exactly ``num_eval_batches(...)`` batches on every process, so the masked-in examples
      of all processes are the split, each exactly once.
    """
    info = dataset_info(config)
    data = config.data
    num_batches = num_eval_batches(
        config, local_batch_size=local_batch_size, process_count=process_count
    )
    start, end = shard_bounds(info.num_eval, process_index, process_count)
    if data.name == "digits":
        d, dtype = digits.load(), _np_dtype(data)
        source = (
            {
                "image": digits.to_model_images(
                    d.eval_x[i : min(i + local_batch_size, end)],
                    data.image_size,
                    dtype,
                    d.mean,
                    d.std,
                ),
                "label": d.eval_y[i : min(i + local_batch_size, end)],
            }
            for i in range(start, end, local_batch_size)
        )
    elif _loader(data) == "numpy":
        source = numpy_loader.prefetch(_numpy_eval(data, start, end, local_batch_size))
    else:
        source = _tf_eval(config, info, start, end, process_index, process_count, local_batch_size)
    return _pad(source, local_batch_size, num_batches, info.image_shape, _np_dtype(data))


def _numpy_eval(data: ml_collections.ConfigDict, start: int, end: int,
                local_batch: int) -> Iterator[Batch]:
    _, split = _numpy_splits(data)
    dtype = _np_dtype(data)
    for i in range(start, end, local_batch):
        index = np.arange(i, min(i + local_batch, end))
        image = numpy_loader.images(split, index, data.image_size)
        yield {"image": numpy_loader.normalize(image, data.mean, data.std, dtype),
               "label": split.labels[index].astype(np.int32)}


def _tf_eval(config, info, start, end, pi, pc, local_batch) -> Iterator[Batch]:
    from faq_jax.data import preprocess  # noqa: PLC0415 - loads TensorFlow

    tf = preprocess.tf
    data = config.data

    def example(image, label):  # image: encoded bytes or uint8 [H, W, 3].
        image = preprocess.eval_image(image, data.image_size, data.eval_resize)
        return {"image": image, "label": tf.cast(label, tf.int32)}

    if data.name == "imagenet2012":
        ds = imagenet.eval_records(data.data_dir, data.manual_dir,
                                   tfds_split_spec("validation", info.num_eval, pi, pc))
        paths = None
    else:
        _, split = _splits(data)
        ds = _elements(split, np.arange(start, end))
        paths = getattr(split, "paths", None)
        if paths is not None:  # Batches of paths for error messages, aligned with the batches.
            paths = paths[start:end]
            paths = [paths[i : i + local_batch] for i in range(0, len(paths), local_batch)]
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE).batch(local_batch)
    return _numpy(_finish(ds, data), paths)


def _pad(
    source: Iterator[Batch],
    local_batch: int,
    num_batches: int,
    image_shape: tuple[int, int, int],
    dtype: Any,
) -> Iterator[Batch]:
    """Pads ``source`` (last batch may be short) to ``num_batches`` full, masked batches."""
    count = 0
    for batch in source:
        n = len(batch["label"])
        mask = np.arange(local_batch) < n
        image = np.zeros((local_batch, *image_shape), dtype)
        label = np.zeros(local_batch, np.int32)
        image[:n], label[:n] = batch["image"], batch["label"]
        count += 1
        yield {"image": image, "label": label, "mask": mask}
    if count > num_batches:
        raise AssertionError(f"{count} eval batches > num_eval_batches={num_batches}.")
    for _ in range(num_batches - count):
        yield {
            "image": np.zeros((local_batch, *image_shape), dtype),
            "label": np.zeros(local_batch, np.int32),
            "mask": np.zeros(local_batch, bool),
        }


def steps_per_epoch(config: ml_collections.ConfigDict, *, global_batch_size: int) -> int:
    """Training steps per epoch: ``num_train // global_batch_size`` (remainder dropped)."""
    return dataset_info(config).num_train // global_batch_size
