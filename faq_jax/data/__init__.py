"""Per-process NumPy batches for training, calibration and exact evaluation.

- :mod:`~faq_jax.data.pipeline`: the entry points (re-exported here): :func:`train_batches`,
  :func:`calibration_batches`, :func:`eval_batches`, :func:`dataset_info`,
  :func:`check_labels` ...;
- :mod:`~faq_jax.data.preprocess`: tf.image ops matching torchvision's transforms;
- one module per source: :mod:`~faq_jax.data.imagenet` (TFDS ``imagenet2012``),
  :mod:`~faq_jax.data.folder` (image folders), :mod:`~faq_jax.data.cifar10` (its archives
  and TFDS ``cifar10``), :mod:`~faq_jax.data.digits` (scikit-learn's, no download).

Importing this package loads no TensorFlow; the TF sources load it when first read. One-time
dataset preparation: ``python -m faq_jax.data {imagenet2012,cifar10} ...``.
"""

from faq_jax.data.pipeline import (
    Batch,
    DatasetInfo,
    calibration_batches,
    check_labels,
    dataset_info,
    eval_batches,
    num_eval_batches,
    shard_bounds,
    steps_per_epoch,
    tfds_split_spec,
    train_batches,
)

__all__ = [
    "Batch",
    "DatasetInfo",
    "calibration_batches",
    "check_labels",
    "dataset_info",
    "eval_batches",
    "num_eval_batches",
    "shard_bounds",
    "steps_per_epoch",
    "tfds_split_spec",
    "train_batches",
]
