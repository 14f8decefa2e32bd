"""``python -m faq_jax.export --workdir DIR --out net.npz [--onnx net.onnx]
[--onnx_int8 net_fast.onnx]``.

Reads the latest fine-tuned checkpoint of a training workdir, exports it
(:func:`faq_jax.export.export`) and writes the ``.npz`` (and, with ``--onnx``, the ONNX
integer model). :func:`load_workdir` is the workdir half on its own.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

import flax.linen as nn
import ml_collections
from etils import epath

from faq_jax import checkpointing, console, models
from faq_jax import policy as policy_lib
from faq_jax import workdir as workdir_lib
from faq_jax.export import exporter, intnet
from faq_jax.export.intnet import ExportError


def load_workdir(workdir: str, config_path: str | None = None
                 ) -> tuple[nn.Module, dict[str, Any], ml_collections.ConfigDict]:
    """(quantized model, latest fine-tuned variables, config) of a training workdir.

    The config is ``config_path`` if given, else the workdir's (:func:`workdir.read_config`).
    Raises ExportError for a float run, a run never calibrated (unless the config says
    ``calib.enabled=False``) and a workdir without a fine-tuned checkpoint.
    """
    workdir = workdir_lib.absolute(workdir)
    if not epath.Path(workdir).is_dir():
        raise ExportError(f"--workdir {workdir}: no such folder")
    config = workdir_lib.read_config(workdir, config_path)
    policy = policy_lib.from_config(config.quant, config.calib)
    if policy is None:
        raise ExportError(f"{workdir}: a float run (quant disabled); nothing to export")
    summary = workdir_lib.read_summary(workdir)
    if "calibrated_lsb" not in summary and config.calib.enabled:
        raise ExportError(f"{workdir}: {workdir_lib.SUMMARY} has no calibrated_lsb: the "
                          "activation l's were never calibrated (run the calibrate stage, or "
                          "pass --config with calib.enabled=False if that was deliberate)")
    ckdir = workdir_lib.finetune_dir(workdir)
    if checkpointing.latest_step(ckdir) is None:
        raise ExportError(f"{ckdir}: no fine-tuned checkpoint")
    step, state = checkpointing.restore_latest(ckdir)
    variables = {k: state[k] for k in ("params", "batch_stats", "quant")}
    model = models.create(config.arch, policy=policy, num_classes=config.num_classes)
    return model, variables, config


def exported_step(workdir: str, step: int) -> str:
    """Which checkpoint an export reads: its step, and whether fine-tuning had finished
    (``summary.json`` holds ``quant_after`` only then)."""
    if "quant_after" in workdir_lib.read_summary(workdir):
        return f"step {step}, the end of fine-tuning"
    return (f"step {step}: fine-tuning has not finished ({workdir_lib.SUMMARY} has no "
            "quant_after), so this is an intermediate checkpoint")


def main(argv: list[str] | None = None) -> None:
    """``python -m faq_jax.export --workdir DIR --out FILE.npz [--onnx FILE.onnx]``."""
    ap = argparse.ArgumentParser(
        prog="python -m faq_jax.export",
        description="Export a fine-tuned FAQ workdir as an integer network.")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True, help="integer network (.npz)")
    ap.add_argument("--onnx", default=None, help="also write an ONNX integer model")
    ap.add_argument("--onnx_int8", default=None,
                    help="also write the int8 deployment ONNX model (onnxruntime's fused "
                         "QLinearConv path; not bit-exact, see docs/export.md)")
    ap.add_argument("--onnx_int8_vnni", action="store_true",
                    help="with --onnx_int8: int8 weights everywhere, fastest on CPUs with "
                         "VNNI, wrong outputs without it (default: 8-bit weights as uint8, "
                         "the same outputs on every x86 CPU)")
    ap.add_argument("--config", default=None, help="the run's config file (full policy)")
    ap.add_argument("--image_size", type=int, default=None,
                    help="input H = W (default: the run's data.image_size)")
    ap.add_argument("--verbosity", type=int, default=None,
                    help="0: INFO logs and the traceback of an error (default: quiet)")
    args = ap.parse_args(argv)
    if args.onnx_int8_vnni and not args.onnx_int8:
        ap.error("--onnx_int8_vnni chooses the form of the --onnx_int8 model: give "
                 "--onnx_int8 FILE as well")
    console.configure(args.verbosity)
    # Bad input ends with one line; NotImplementedError: a layer the exporter cannot write;
    # ImportError: the export extra (onnx) is missing.
    with console.exit_on_error(extra=(NotImplementedError, ImportError)):
        model, variables, config = load_workdir(args.workdir, args.config)
        size = args.image_size or config.data.image_size
        net = exporter.export(model, variables, input_shape=(size, size, 3),
                              allow_uncalibrated=not config.calib.enabled)
        intnet.save(net, args.out)
        buf = io.StringIO()
        workdir = workdir_lib.absolute(args.workdir)
        step = checkpointing.latest_step(workdir_lib.finetune_dir(workdir))
        buf.write(f"exported {exported_step(workdir, step)}\n")
        buf.write(f"wrote {args.out}: {len(net.nodes)} nodes, {len(net.arrays)} arrays")
        if args.onnx:
            from faq_jax.export import onnx_writer  # noqa: PLC0415 - onnx is optional
            onnx_writer.save(net, args.onnx)
            buf.write(f"; {args.onnx}")
        if args.onnx_int8:
            from faq_jax.export import onnx_deploy  # noqa: PLC0415 - onnx is optional
            onnx_deploy.save(net, args.onnx_int8, portable=not args.onnx_int8_vnni,
                             allow_uncalibrated=not config.calib.enabled)
            buf.write(f"; {args.onnx_int8} (int8 deployment model)")
        print(buf.getvalue())
