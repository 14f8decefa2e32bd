"""``python -m faq_jax.export --workdir DIR --out net.npz [--onnx net.onnx]``.

Reads the latest fine-tuned checkpoint of a training workdir, exports it
(:func:`faq_jax.export.export`) and writes the ``.npz`` (and, with ``--onnx``, the ONNX
integer model). :func:`load_workdir` is the workdir half on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
from typing import Any

import flax.linen as nn
import ml_collections
import orbax.checkpoint as ocp

from faq_jax import checkpointing, models
from faq_jax.config import check as config_check
from faq_jax.config import defaults
from faq_jax.export import exporter, intnet
from faq_jax.export.intnet import ExportError


def _config_from_workdir(workdir: str, config_path: str | None):
    """The run's config: ``--config``, else ``config.json``, else experiment.json + defaults."""
    with open(os.path.join(workdir, "experiment.json")) as f:
        exp = json.load(f)
    if config_path:
        import importlib.util  # noqa: PLC0415
        spec = importlib.util.spec_from_file_location("export_config", config_path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.get_config()
    full = os.path.join(workdir, "config.json")
    if os.path.exists(full):
        with open(full) as f:
            return ml_collections.ConfigDict(json.load(f))
    c = defaults.get_base(exp["arch"], exp["w_bits"] or 8, exp["a_bits"] or 8,
                                 dataset=exp.get("dataset", "imagenet2012"))
    c.num_classes = exp["num_classes"]
    c.quant.enabled = bool(exp.get("quant", True))
    c.quant.rules = tuple(tuple(r) for r in exp.get("rules", []))
    return c


def load_workdir(workdir: str, config_path: str | None = None
                 ) -> tuple[nn.Module, dict[str, Any], Any]:
    """(quantized model, latest fine-tuned variables, config) of a training workdir."""
    workdir = checkpointing.absolute(workdir)
    config = _config_from_workdir(workdir, config_path)
    policy = config_check.make_policy(config)
    if policy is None:
        raise ExportError(f"{workdir}: a float run (quant disabled); nothing to export")
    summary_path = os.path.join(workdir, "summary.json")
    summary = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    if "calibrated_lsb" not in summary and config.calib.enabled:
        raise ExportError(f"{workdir}: summary.json has no calibrated_lsb: the activation l's "
                          "were never calibrated (run the calibrate stage, or pass --config "
                          "with calib.enabled=False if that was deliberate)")
    ckdir = os.path.join(workdir, "checkpoints")
    mgr = ocp.CheckpointManager(ckdir)
    step = mgr.latest_step()
    if step is None:
        raise ExportError(f"{ckdir}: no fine-tuned checkpoint")
    state = mgr.restore(step, args=ocp.args.StandardRestore())
    state = state if isinstance(state, dict) else dataclasses.asdict(state)
    variables = {k: state[k] for k in ("params", "batch_stats", "quant")}
    model = models.create(config.arch, policy=policy, num_classes=config.num_classes)
    return model, variables, config


def main(argv: list[str] | None = None) -> None:
    """``python -m faq_jax.export --workdir DIR --out FILE.npz [--onnx FILE.onnx]``."""
    ap = argparse.ArgumentParser(
        prog="python -m faq_jax.export",
        description="Export a fine-tuned FAQ workdir as an integer network.")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True, help="integer network (.npz)")
    ap.add_argument("--onnx", default=None, help="also write an ONNX integer model")
    ap.add_argument("--config", default=None, help="the run's config file (full policy)")
    ap.add_argument("--image_size", type=int, default=None,
                    help="input H = W (default: the run's data.image_size)")
    args = ap.parse_args(argv)
    model, variables, config = load_workdir(args.workdir, args.config)
    size = args.image_size or config.data.image_size
    net = exporter.export(model, variables, input_shape=(size, size, 3),
                          allow_uncalibrated=not config.calib.enabled)
    intnet.save(net, args.out)
    buf = io.StringIO()
    buf.write(f"wrote {args.out}: {len(net.nodes)} nodes, {len(net.arrays)} arrays")
    if args.onnx:
        from faq_jax.export import onnx_writer  # noqa: PLC0415 - onnx is optional
        onnx_writer.save(net, args.onnx)
        buf.write(f"; {args.onnx}")
    print(buf.getvalue())
