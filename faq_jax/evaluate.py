"""``python -m faq_jax.evaluate``: top-1/top-5 of a run or an exported network on any data.

A network is a workdir's checkpoint (``--stage fp32`` or ``quant``, any ``--step``) or an
exported integer network (``--model net.npz``: the NumPy executor; ``--model net.onnx``:
onnxruntime). The data are the run's (its config's ``data`` section) with any field
overridden (``--data.name=folder --data.eval_dir=DIR``, ``--data.eval_split=test``...).
It prints the result and writes it as JSON (``--out``; by default beside the workdir or the
model file, never inside a workdir). Nothing in the workdir is written, so a read-only
workdir works.

It reuses what training uses: the data pipeline and ``trainer.Evaluator`` (exact, padded
evaluation), ``checkpointing.restore`` and the export executor.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath

from faq_jax import (
    checkpointing,
    console,
    converted,
    layers,
    models,
    sharding,
    steps,
    trainer,
)
from faq_jax import data as data_lib
from faq_jax import policy as policy_lib
from faq_jax import workdir as workdir_lib
from faq_jax.config import defaults

FLAGS = flags.FLAGS
STAGES = ("fp32", "quant")


class Network(NamedTuple):
    """What is evaluated: a model and its variables, or a host-side eval step."""

    model: Any  # flax module; None for an exported network
    variables: dict[str, Any]
    step_fn: Callable[..., steps.Metrics] | None  # replaces the model's jitted eval step
    name: str  # e.g. "W4A4 fine-tuned, step 230"
    tag: str  # in the default output name, e.g. "quant_step230"
    image_size: int | None = None  # what an exported network takes


def workdir_config(workdir: str | None, config_path: str | None) -> ml_collections.ConfigDict:
    """The config whose ``data`` and model fields evaluation starts from: ``config_path``,
    else the workdir's, else an evaluation-only default (ImageNet's data section)."""
    if workdir:
        if not epath.Path(workdir).is_dir():
            raise ValueError(f"--workdir {workdir}: no such folder")
        return workdir_lib.read_config(workdir, config_path)
    if config_path:
        return workdir_lib.read_config("", config_path)
    c = ml_collections.ConfigDict()
    c.data = defaults.data_config()
    c.num_classes, c.eval_batch_size, c.max_eval_batches = 0, 250, -1
    return c


def _stage_steps(workdir: str) -> dict[str, list[int]]:
    return {"fp32": checkpointing.all_steps(workdir_lib.pretrain_dir(workdir)),
            "quant": checkpointing.all_steps(workdir_lib.finetune_dir(workdir))}


def workdir_network(workdir: str, config: ml_collections.ConfigDict, stage: str | None,
                    step: int | None) -> Network:
    """The network of ``workdir`` at ``stage`` (default: ``quant`` when it has fine-tuned
    checkpoints, else ``fp32``) and checkpoint ``step`` (default: the newest)."""
    held = _stage_steps(workdir)
    stage = stage or ("quant" if held["quant"] else "fp32")
    if stage not in STAGES:
        raise ValueError(f"--stage={stage}: choose one of {', '.join(STAGES)}")
    dtype = layers.COMPUTE_DTYPES[config.compute_dtype]
    if stage == "quant":
        policy = policy_lib.from_config(config.quant, config.calib)
        if policy is None:
            raise ValueError(f"{workdir} is a float run (config.quant.enabled=False): use "
                             "--stage=fp32")
        step, state = checkpointing.restore(workdir_lib.finetune_dir(workdir), step)
        model = models.create(config.arch, policy=policy, num_classes=config.num_classes,
                              dtype=dtype)
        variables = {k: state[k] for k in ("params", "batch_stats", "quant")}
        name = f"{policy_lib.describe(policy)} fine-tuned, step {step}"
        return Network(model, variables, None, name, f"quant_step{step}")
    model = models.create(config.arch, num_classes=config.num_classes, dtype=dtype)
    if held["fp32"] or step is not None:
        step, state = checkpointing.restore(workdir_lib.pretrain_dir(workdir), step)
        variables = {k: state[k] for k in ("params", "batch_stats")}
        return Network(model, variables, None, f"fp32, step {step} of pretraining",
                       f"fp32_step{step}")
    if not config.get("init_checkpoint"):
        raise ValueError(f"{workdir} holds no fp32 network: no checkpoints in "
                         f"{workdir_lib.pretrain_dir(workdir)} and no config.init_checkpoint")
    loaded = converted.load(config.init_checkpoint, arch=config.arch)
    variables = {"params": loaded["params"], "batch_stats": loaded.get("batch_stats", {})}
    return Network(model, variables, None, f"fp32 from {config.init_checkpoint}", "fp32")


def _host_step(logits_fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., steps.Metrics]:
    """An eval step that runs ``logits_fn`` (NumPy images -> float logits) on the host."""

    def step(variables: dict[str, Any], batch: dict[str, Any]) -> steps.Metrics:
        del variables
        logits = logits_fn(np.asarray(batch["image"], np.float32))
        return steps.eval_metrics(logits, np.asarray(batch["label"]), np.asarray(batch["mask"]))

    return step


def exported_network(path: str) -> Network:
    """An exported integer network: ``.npz`` (the NumPy executor) or ``.onnx``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "No such file", path)
    if path.endswith(".onnx"):
        from faq_jax.export import onnx_deploy  # noqa: PLC0415 - onnx is optional

        sess = onnx_deploy.session(path)
        meta = sess.get_modelmeta().custom_metadata_map
        size = int(sess.get_inputs()[0].shape[2])

        def logits(x: np.ndarray) -> np.ndarray:
            out = onnx_deploy.run(sess, images=x)
            if out.dtype.kind in "iu":  # the bit-exact model's logit codes
                out = np.ldexp(out.astype(np.float64), int(meta["logits_l"]))
            return out

        return Network(None, {}, _host_step(logits), f"ONNX model {path}", "", size)
    from faq_jax import export  # noqa: PLC0415

    net = export.load(path)

    def logits(x: np.ndarray) -> np.ndarray:
        q, lsb = export.run(net, export.input_codes(net, x))
        return np.ldexp(q.astype(np.float64), lsb)

    return Network(None, {}, _host_step(logits), f"integer network {path}", "",
                   int(net.graph["input_shape"][0]))


def _data_tag(data: ml_collections.ConfigDict) -> str:
    if data.name == "folder":
        return "folder-" + os.path.basename(os.path.normpath(data.eval_dir))
    if data.name == "cifar10":
        return f"cifar10-{data.eval_split}"
    return data.name


def default_out(workdir: str | None, model: str | None, network: Network,
                data: ml_collections.ConfigDict) -> str:
    """Beside the model file or the workdir, never inside it:
    ``net_eval_digits.json``, ``WORKDIR_eval_quant_step230_digits.json``."""
    base = os.path.splitext(model)[0] if model else os.path.normpath(workdir)
    tag = f"_{network.tag}" if network.tag else ""
    return f"{base}_eval{tag}_{_data_tag(data)}.json"


def evaluate(config: ml_collections.ConfigDict, network: Network) -> dict[str, Any]:
    """The Evaluator's result (top1, top5, loss, count, packed hits) of ``network`` on
    ``config.data``'s eval split."""
    if network.step_fn is not None and jax.process_count() > 1:
        raise ValueError("an exported network is evaluated by one process; run without "
                         "--distributed")
    info = data_lib.dataset_info(config)
    if network.image_size and network.image_size != config.data.image_size:
        raise ValueError(f"the network takes {network.image_size}x{network.image_size} "
                         f"images, config.data.image_size is {config.data.image_size}: set "
                         f"--data.image_size={network.image_size}")
    n = config.get("num_classes")
    own_classes = config.data.name == "folder" and config.data.train_dir == config.data.eval_dir
    if n and (info.num_classes > n or own_classes and info.num_classes != n):
        raise ValueError(f"the data have {info.num_classes} classes, the network {n}: an image "
                         "folder holds one subfolder per class of the network (sorted names "
                         "give the class indices), or --data.train_dir names the training "
                         "folder whose classes it uses")
    evaluator = trainer.Evaluator(network.model, config, sharding.make_mesh(),
                                  step=network.step_fn)
    return evaluator(network.variables, prefix=network.name)


def _with_data_overrides(config: ml_collections.ConfigDict, model: str | None,
                         image_size: int | None) -> ml_collections.ConfigDict:
    """``config`` with the ``--data.*`` overrides (and ``--eval_batch_size``) applied."""
    from ml_collections import config_flags  # noqa: PLC0415

    config = ml_collections.ConfigDict(config.to_dict())
    overrides = config_flags.get_override_values(FLAGS["data"])
    if model and image_size and "image_size" not in overrides and not (
            FLAGS.workdir or FLAGS.config):
        overrides = {"image_size": image_size, "eval_resize": image_size * 8 // 7, **overrides}
    for key, value in overrides.items():
        config.data[key] = value
    if config.data.name == "folder" and not config.data.train_dir:
        config.data.train_dir = config.data.eval_dir  # classes: the eval folder's own
    if FLAGS.eval_batch_size:
        config.eval_batch_size = FLAGS.eval_batch_size
    config.max_eval_batches = -1
    return config


def _define_flags() -> None:
    from ml_collections import config_flags  # noqa: PLC0415

    flags.DEFINE_string("workdir", None, "A training workdir (read only).")
    flags.DEFINE_string("model", None, "An exported network: net.npz or net.onnx.")
    flags.DEFINE_string("config", None, "A config file (for --model without --workdir, or a "
                        "workdir older than its config.json).")
    flags.DEFINE_enum("stage", None, list(STAGES), "The workdir's network: fp32 (pretrained) "
                      "or quant (fine-tuned); default: quant if it has fine-tuned checkpoints.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_integer("eval_batch_size", None, "Default: the config's.")
    flags.DEFINE_string("out", None, "The JSON result (default: beside the workdir or model).")
    config_flags.DEFINE_config_dict("data", defaults.data_config(), "The data: the run's, "
                                    "with these fields overridden (--data.name=folder "
                                    "--data.eval_dir=DIR ...).", lock_config=True)


def main(argv: list[str]) -> None:
    del argv
    console.configure_from_flags()
    with console.exit_on_error(extra=(ImportError, NotImplementedError)):
        if not (FLAGS.workdir or FLAGS.model):
            raise ValueError("give --workdir=DIR (a training run) or --model=FILE "
                             "(.npz/.onnx; its data from --workdir, --config or --data.*)")
        if FLAGS.model and (FLAGS.stage or FLAGS.step is not None):
            raise ValueError("--stage and --step pick a workdir's checkpoint; --model is "
                             "evaluated as it is")
        workdir = workdir_lib.absolute(FLAGS.workdir) if FLAGS.workdir else None
        config = workdir_config(workdir, FLAGS.config)
        network = exported_network(FLAGS.model) if FLAGS.model else \
            workdir_network(workdir, config, FLAGS.stage, FLAGS.step)
        config = _with_data_overrides(config, FLAGS.model, network.image_size)
        result = evaluate(config, network)
        out = FLAGS.out or default_out(workdir, FLAGS.model, network, config.data)
        record = {**result, "network": network.name, "workdir": workdir,
                  "model": FLAGS.model and os.path.abspath(FLAGS.model),
                  "data": config.data.to_dict()}
        workdir_lib.write_json(out, record)
        console.show(f"{network.name} on {_data_tag(config.data)} ({int(result['count'])} "
                     f"images): top-1 {result['top1']:.2f}, top-5 {result['top5']:.2f}\n"
                     f"wrote {out}")


def run() -> None:
    console.define_flags(_define_flags)
    app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
    run()
