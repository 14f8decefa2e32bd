"""The FAQ pipeline: load -> eval fp32 -> calibrate -> eval quantized -> fine-tune -> eval.

:func:`train_and_evaluate` is what ``python -m faq_jax.main`` runs and what notebooks and
tests call. Each stage can be switched off in ``config.stages``; a restarted run resumes
from the latest checkpoint and skips the stages it already finished (their results are
in ``workdir/summary.json``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from faq_jax import (
    analysis,
    checkpointing,
    converted,
    keypaths,
    layers,
    models,
    sharding,
    trainer,
)
from faq_jax import calibrate as calibrate_lib
from faq_jax import data as data_lib
from faq_jax import workdir as workdir_lib
from faq_jax.config import check as config_check

NonFiniteLossError = trainer.NonFiniteLossError  # what a diverged run raises


def _initial_variables(config: ml_collections.ConfigDict, float_model, quant_model,
                       image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """fp32 weights (converted checkpoint or random init) plus uncalibrated quant l's."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    key = jax.random.key(config.seed)
    if config.init == "pretrained" and config.init_checkpoint:
        loaded = converted.load(config.init_checkpoint, arch=config.arch)
        mismatch = converted.normalization_mismatch(config.init_checkpoint, config.data.mean,
                                                     config.data.std)
        if mismatch:
            logging.warning("%s", mismatch)
        variables = {"params": loaded["params"], "batch_stats": loaded.get("batch_stats", {})}
        shapes = jax.eval_shape(lambda: float_model.init(key, x))
        config_check.check_variables(variables, shapes, config.init_checkpoint)
    else:  # random init: one init gives params, batch_stats and quant l's together
        variables = jax.jit((quant_model or float_model).init)(key, x)
    variables = dict(jax.device_get(variables))
    if quant_model is not None and "quant" not in variables:
        variables["quant"] = jax.device_get(
            jax.jit(lambda k: quant_model.init(k, x).get("quant", {}))(key))
    return variables


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       continue_changed: bool = False) -> dict[str, Any]:
    """Runs the configured FAQ stages; returns (and writes) the summary of results.

    Everything that can refuse the run is checked before anything is written: the config,
    the workdir (its experiment and recorded config, :func:`workdir_lib.admit`; with
    ``continue_changed`` a changed config continues on purpose and is recorded), the labels
    against ``num_classes`` and the policy rules against the model. Then the run holds the
    workdir's lock while it records its config and runs.
    """
    stages, pol = config_check.validate(config)
    workdir = workdir_lib.absolute(workdir)
    admit = functools.partial(workdir_lib.admit, workdir, config,
                              config_check.experiment_id(config),
                              continue_changed=continue_changed)
    admit()
    info = data_lib.dataset_info(config)
    data_lib.check_labels(config)
    dtype = layers.COMPUTE_DTYPES[config.compute_dtype]
    float_model = models.create(config.arch, num_classes=config.num_classes, dtype=dtype)
    quant_model = None if pol is None else models.create(  # checks that every rule names a layer
        config.arch, policy=pol, num_classes=config.num_classes, dtype=dtype)
    with workdir_lib.run_lock(workdir):
        workdir_lib.record(admit())  # checked again under the lock
        return _run_stages(config, workdir, stages, info, float_model, quant_model)


def _run_stages(config: ml_collections.ConfigDict, workdir: str, stages: set[str],
                info: data_lib.DatasetInfo, float_model, quant_model) -> dict[str, Any]:
    """train_and_evaluate's stages, in a workdir this run holds."""
    writer = trainer.clu()[0].create_default_writer(
        workdir, just_logging=jax.process_index() > 0 or not workdir_lib.writable(workdir))
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
    logging.info("process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
                 jax.devices())
    mesh = sharding.make_mesh()
    variables = _initial_variables(config, float_model, quant_model, info.image_shape)
    summary = workdir_lib.read_summary(workdir)
    quantized = quant_model is not None
    summary.update(arch=config.arch, w_bits=config.quant.w_bits if quantized else None,
                   a_bits=config.quant.a_bits if quantized else None)
    finetune_dir = workdir_lib.finetune_dir(workdir)
    resumed_finetune = quant_model is not None and \
        checkpointing.latest_step(finetune_dir) is not None

    float_eval = trainer.Evaluator(float_model, config, mesh, writer)
    if "pretrain" in stages:
        pre = config.pretrain
        stage = ml_collections.ConfigDict(dict(num_epochs=pre.num_epochs,
                                               batch_size=pre.batch_size, micro_batch_size=0,
                                               batch_schedule=(), optim=pre.optim))
        trained = trainer.Trainer(float_eval, config, stage, workdir_lib.pretrain_dir(workdir),
                                  info.num_train, eval_prefix="fp32").fit(variables)
        variables = {**variables, **trained.variables}
    if "eval_fp32" in stages and "fp32" not in summary:
        summary["fp32"] = float_eval(variables, 0, "fp32")
        workdir_lib.write_summary(workdir, summary)

    quant_eval = None if quant_model is None else \
        trainer.Evaluator(quant_model, config, mesh, writer)
    if quant_model is not None and not resumed_finetune and \
            stages & {"calibrate", "eval_quant", "finetune"}:
        variables["quant"] = _calibrated_quant(config, stages, summary, quant_model, variables,
                                               mesh)
        if config.calib.enabled:
            summary["calibrated_lsb"] = _flat_lsbs(variables["quant"])
        if "eval_quant" in stages and "quant_before" not in summary:
            summary["quant_before"] = quant_eval(variables, 0, "quant_before")
        workdir_lib.write_summary(workdir, summary)

    if quant_model is not None and "finetune" in stages:
        start_params = variables["params"]
        fitted = trainer.Trainer(quant_eval, config, config, finetune_dir, info.num_train,
                                 eval_prefix="quant").fit(variables)
        variables = fitted.variables
        if fitted.grad_noise is not None:
            summary["grad_noise"] = fitted.grad_noise
        summary["quant_after"] = quant_eval(variables, 0, "quant_after")
        if config.analysis.weight_similarity:
            summary["weight_cosine"] = analysis.weight_similarity(start_params,
                                                                  variables["params"])
        workdir_lib.write_summary(workdir, summary)
    writer.flush()
    _log_table(summary)
    return {**summary, "variables": variables}


def _calibrated_quant(config: ml_collections.ConfigDict, stages: set[str],
                      summary: dict[str, Any], quant_model, variables: dict[str, Any],
                      mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """The activation l's every quantized stage uses (FAQ section 3).

    With ``calib.enabled`` a quantized network never runs on the uncalibrated defaults: the
    ``calibrate`` stage calibrates; without it, the l's an earlier run of this workdir
    calibrated are reused, and if there are none, calibration runs anyway (with a warning
    saying so). ``calib.enabled=False`` keeps the defaults, FAQ's no-calibration control.
    """
    quant = variables["quant"]
    if not config.calib.enabled:
        return quant
    if "calibrate" not in stages:
        if "calibrated_lsb" in summary:
            logging.info("using the activation l's calibrated by an earlier run of this workdir")
            return _unflat_lsbs(summary["calibrated_lsb"], quant)
        logging.warning("config.stages=%r has no 'calibrate' and this workdir holds no "
                        "calibrated l's: calibrating now (config.calib.enabled=True). Set "
                        "config.calib.enabled=False for the uncalibrated control.",
                        config.stages)
    local = sharding.check_divisible(config.batch_size, "batch_size")
    batches = data_lib.calibration_batches(
        config, local_batch_size=local, num_batches=config.calib.num_batches,
        process_index=jax.process_index(), process_count=jax.process_count())
    bsh = sharding.batch_sharding(mesh)
    return jax.device_get(calibrate_lib.calibrate(
        quant_model, sharding.replicate(variables, mesh),
        (sharding.to_global(b, bsh)["image"] for b in batches)))


def _unflat_lsbs(flat: dict[str, float], like: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_flat_lsbs` on the structure of ``like``; ValueError on a mismatch."""
    current = keypaths.owners(like, "lsb")
    if sorted(current) != sorted(flat):
        raise ValueError("the calibrated l's in summary.json do not fit this network's "
                         f"quantizers (missing {sorted(set(current) - set(flat))[:3]}, "
                         f"unexpected {sorted(set(flat) - set(current))[:3]}); use a new "
                         "--workdir")
    return keypaths.unflatten({f"{path}/lsb": np.asarray(flat[path], np.asarray(v).dtype)
                               for path, v in current.items()})


def _flat_lsbs(quant_vars: dict[str, Any]) -> dict[str, float]:
    """{quantizer path: l} of the ``quant`` collection, as ``summary.json`` records them."""
    return {path: float(v) for path, v in keypaths.owners(quant_vars, "lsb").items()}


def _log_table(summary: dict[str, Any]) -> None:
    rows = [("fp32", summary.get("fp32")), ("quantized, before fine-tuning",
            summary.get("quant_before")), ("quantized, after fine-tuning",
            summary.get("quant_after"))]
    lines = [f"{'network':32s} {'top-1':>7s} {'top-5':>7s}"]
    for name, r in rows:
        if r:
            lines.append(f"{name:32s} {r['top1']:7.2f} {r['top5']:7.2f}")
    if "weight_cosine" in summary:
        lines.append(f"mean weight cosine (start vs end): {summary['weight_cosine']['mean']:.4f}")
    if jax.process_index() == 0:  # the run's result, for the console (summary.json has all)
        print("\n".join(lines), flush=True)
