"""Config validation before any compute, and the objects a config implies.

Every value a user can get wrong (bits, percentiles, learning rates, arch, stages, batch
sizes) is checked here, so a bad override fails in a second with a message naming the
field, not an hour into a run. :func:`validate` returns what the run needs from it (the
stages and the precision policy), so nothing is derived from the config twice.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from faq_jax import keypaths, layers, models, optim
from faq_jax import policy as policy_lib
from faq_jax.data import cifar10

STAGES = ("pretrain", "eval_fp32", "calibrate", "eval_quant", "finetune")
DATASETS = ("imagenet2012", "folder", "cifar10", "digits")


def _fail(field: str, value: Any, why: str) -> None:
    raise ValueError(f"config.{field}={value!r}: {why}")


def _check_optim(prefix: str, o: ml_collections.ConfigDict) -> None:
    if not o.lr > 0:
        _fail(f"{prefix}.lr", o.lr, "the learning rate must be positive")
    if o.schedule not in optim.SCHEDULES:
        _fail(f"{prefix}.schedule", o.schedule, f"must be one of {optim.SCHEDULES}")
    if o.schedule in optim.PER_STEP and not 0 <= o.get("final_lr", 0.0) <= o.lr:
        _fail(f"{prefix}.final_lr", o.get("final_lr"), "must lie in [0, lr]")
    if o.schedule == "anneal" and not o.final_lr > 0:
        _fail(f"{prefix}.final_lr", o.final_lr, "the 'anneal' schedule needs final_lr > 0")
    if not 0 < o.decay_rate <= 1:
        _fail(f"{prefix}.decay_rate", o.decay_rate, "must lie in (0, 1]")
    if not 0 <= o.momentum < 1:
        _fail(f"{prefix}.momentum", o.momentum, "must lie in [0, 1)")
    if o.weight_decay < 0:
        _fail(f"{prefix}.weight_decay", o.weight_decay, "must be >= 0")
    if list(o.step_epochs) != sorted(o.step_epochs):
        _fail(f"{prefix}.step_epochs", o.step_epochs, "must be ascending")


class Plan(NamedTuple):
    """What a valid config asks for."""

    stages: set[str]  # of STAGES
    policy: policy_lib.Policy | None  # policy_lib.from_config; None: a float run


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> Plan:
    """Raises ValueError naming the first bad field; returns the stages and the policy.

    ``num_devices`` (default: ``jax.device_count()``) checks a config for another mesh.
    """
    models.spec(config.arch)
    if config.data.name not in DATASETS:
        _fail("data.name", config.data.name, f"must be one of {DATASETS}")
    if config.data.name == "cifar10":
        cifar10.check_archives(config.data)
    stages = {s.strip() for s in config.stages.split(",") if s.strip()}
    unknown = stages - set(STAGES)
    if unknown:
        _fail("stages", config.stages, f"unknown stage(s) {sorted(unknown)}; "
              f"choose from {STAGES}")
    if config.init not in ("pretrained", "random"):
        _fail("init", config.init, "must be 'pretrained' or 'random'")
    if config.compute_dtype not in layers.COMPUTE_DTYPES:
        _fail("compute_dtype", config.compute_dtype,
              f"must be one of {sorted(layers.COMPUTE_DTYPES)}")
    try:  # bits, lsb's, percentiles, rules
        policy = policy_lib.from_config(config.quant, config.calib)
    except ValueError as e:
        raise ValueError(f"config.quant: {e}") from e
    c = config.calib
    if not isinstance(c.num_batches, int) or c.num_batches < 1:
        _fail("calib.num_batches", c.num_batches, "must be a positive int")
    _whole_epochs("num_epochs", config.num_epochs)
    for name, low in (("log_every_steps", 1), ("checkpoint_every_steps", 1),
                      ("keep_checkpoints", 1), ("eval_every_epochs", 0)):
        v = config[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            _fail(name, v, f"must be an int >= {low}")
    n_dev = jax.device_count() if num_devices is None else num_devices
    for name in ("batch_size", "eval_batch_size"):
        v = config[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            _fail(name, v, "must be a positive int")
    # eval_batch_size needs no divisibility: evaluation pads each batch to the device count.
    _check_multiple("batch_size", config.batch_size, n_dev, "devices")
    if config.micro_batch_size:
        _check_multiple("micro_batch_size", config.micro_batch_size, n_dev, "devices")
        if config.batch_size % config.micro_batch_size:
            _fail("micro_batch_size", config.micro_batch_size,
                  f"must divide batch_size={config.batch_size}; nearest divisors: "
                  f"{_nearest_divisors(config.batch_size, config.micro_batch_size, n_dev)}")
    for e, b in config.batch_schedule or ():
        if b % (config.micro_batch_size or config.batch_size):
            _fail("batch_schedule", config.batch_schedule,
                  f"batch size {b} at epoch {e} is not a multiple of the micro-batch size")
    try:  # epochs from 0, increasing (the dataset size is checked when it is known)
        optim.batch_schedule(config, np.iinfo(np.int64).max, int(config.num_epochs))
    except ValueError as e:
        _fail("batch_schedule", config.batch_schedule, str(e))
    _check_optim("optim", config.optim)
    if "pretrain" in stages:
        _check_optim("pretrain.optim", config.pretrain.optim)
        _whole_epochs("pretrain.num_epochs", config.pretrain.num_epochs)
        b = config.pretrain.batch_size
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            _fail("pretrain.batch_size", b, "must be a positive int")
        _check_multiple("pretrain.batch_size", b, n_dev, "devices")
    if config.init == "pretrained" and not config.init_checkpoint and "pretrain" not in stages:
        _fail("init_checkpoint", config.init_checkpoint,
              "config.init='pretrained' needs the folder written by `python -m weights_convert "
              "--arch ARCH ... --out DIR` (or add the 'pretrain' stage, or set "
              "config.init='random')")
    if config.init_checkpoint and not _exists(config.init_checkpoint):
        _fail("init_checkpoint", config.init_checkpoint,
              "no such folder; convert torchvision weights first with `python -m "
              "weights_convert --arch ARCH --weights IMAGENET1K_V1 --out DIR`")
    return Plan(stages, policy)


def check_dataset_size(config: ml_collections.ConfigDict, stages: set[str],
                       num_train: int) -> None:
    """Every batch the run will draw fits the ``num_train`` training examples: the
    pretraining batch, the calibration and fine-tuning batches (each size of the batch
    schedule). Called once the dataset is known, before any compute."""
    batches = []  # (field, its value, a batch size it implies)
    if "pretrain" in stages:
        batches.append(("pretrain.batch_size", config.pretrain.batch_size,
                        config.pretrain.batch_size))
    if config.quant.enabled and stages & {"calibrate", "eval_quant", "finetune"}:
        batches.append(("batch_size", config.batch_size, config.batch_size))
    if config.quant.enabled and "finetune" in stages:
        batches += [("batch_schedule", config.batch_schedule, b)
                    for _, b in config.batch_schedule or ()]
    for field, value, b in batches:
        if b > num_train:
            _fail(field, value, f"a batch of {b} exceeds the {num_train} training examples "
                  f"of {config.data.name}; use at most {num_train}")


def _check_multiple(field: str, v: int, n: int, of: str) -> None:
    """A batch size must split evenly over ``n`` devices; never changed silently."""
    if v % n:
        lo, hi = v // n * n, (v // n + 1) * n
        near = f"{lo} or {hi}" if lo else f"{hi}"
        _fail(field, v, f"must be a multiple of the {n} {of}; nearest valid values: {near}")


def _nearest_divisors(total: int, v: int, n: int) -> str:
    """The divisors of ``total`` that are multiples of ``n``, nearest to ``v`` first."""
    ok = [d for d in range(n, total + 1, n) if total % d == 0]
    return " or ".join(str(d) for d in sorted(ok, key=lambda d: (abs(d - v), d))[:2]) or "none"


def _whole_epochs(field: str, v: Any) -> None:
    if isinstance(v, bool) or not float(v) == int(v) or v < 1:
        _fail(field, v, "must be a whole number of epochs >= 1 (schedules are per epoch; "
              "max_steps stops a smoke run early)")


def _exists(path: str) -> bool:
    from etils import epath  # noqa: PLC0415

    return epath.Path(path).exists()


def experiment_id(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What makes two runs the same experiment (checked against the workdir)."""
    q = config.quant
    experiment = {
        "arch": config.arch, "num_classes": config.num_classes, "dataset": config.data.name,
        "quant": bool(q.enabled), "w_bits": q.w_bits if q.enabled else None,
        "a_bits": q.a_bits if q.enabled else None,
        "rules": [list(r) for r in q.rules] if q.enabled else [],
    }
    policy = policy_lib.from_config(q, config.calib)
    if policy is not None and policy.uses_lsq():  # FAQ runs keep their record unchanged
        experiment.update(method=policy.method, lsq_pow2=policy.lsq_pow2)
    return experiment


def check_variables(variables: dict[str, Any], expected: dict[str, Any], source: str) -> None:
    """Raises ValueError naming missing/unexpected/mis-shaped entries of loaded weights."""
    def flat(tree):
        return {path: tuple(np.shape(leaf)) for path, leaf in keypaths.flatten(tree).items()}

    got, want = flat({k: variables.get(k, {}) for k in ("params", "batch_stats")}), \
        flat({k: expected.get(k, {}) for k in ("params", "batch_stats")})
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    shapes = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights in {source} do not fit the configured model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches "
            f"{[(k, got[k], want[k]) for k in shapes[:5]]}. Check config.arch and "
            "config.num_classes against the converted checkpoint.")
