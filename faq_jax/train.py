"""The FAQ pipeline: load -> eval fp32 -> calibrate -> eval quantized -> fine-tune -> eval.

:func:`train_and_evaluate` is what ``python -m faq_jax.main`` runs and what notebooks and
tests call. Each stage can be switched off in ``config.stages``; a restarted run resumes
from the latest checkpoint and skips the stages it already finished (their results are
in ``workdir/summary.json``).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from faq_jax import (
    analysis,
    checkpointing,
    console,
    converted,
    keypaths,
    layers,
    lsq,
    models,
    paired,
    sharding,
    trainer,
    writers,
)
from faq_jax import calibrate as calibrate_lib
from faq_jax import data as data_lib
from faq_jax import policy as policy_lib
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
        # The quantizers' own state: FAQ's l's, and LSQ's step parameters (placeholders
        # until the calibrate stage starts them from these weights and a batch).
        quant, steps = jax.device_get(jax.jit(lambda k: _quantizer_state(
            quant_model.init(k, x)))(key))
        variables["quant"] = quant
        if steps:
            variables["params"] = keypaths.unflatten({**keypaths.flatten(variables["params"]),
                                                      **steps})
    return variables


def _quantizer_state(variables: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``quant`` collection, ``{path: value}`` of the LSQ step parameters)."""
    steps = {p: v for p, v in keypaths.flatten(variables["params"]).items()
             if lsq.is_step_param(p.rsplit(keypaths.SEP, 1)[-1])}
    return variables.get("quant", {}), steps


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
    info = data_lib.dataset_info(config)  # before the workdir is touched, like validate
    config_check.check_dataset_size(config, stages, info.num_train)
    workdir = workdir_lib.absolute(workdir)
    admit = functools.partial(workdir_lib.admit, workdir, config,
                              config_check.experiment_id(config),
                              continue_changed=continue_changed)
    admit()
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
    writer = writers.create(
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
                                  info.num_train, eval_prefix="fp32", name="pretrain",
                                  ).fit(variables)
        variables = {**variables, **trained.variables}
    if "eval_fp32" in stages and "fp32" not in summary:
        summary["fp32"] = float_eval(variables, 0, "fp32")
        workdir_lib.write_summary(workdir, summary)

    quant_eval = None if quant_model is None else \
        trainer.Evaluator(quant_model, config, mesh, writer)
    if quant_model is not None and not resumed_finetune and \
            stages & {"calibrate", "eval_quant", "finetune"}:
        variables = _calibrated(config, stages, summary, quant_model, variables, mesh)
        if config.calib.enabled:
            summary["calibrated_lsb"] = _flat_lsbs(variables["quant"])
        if quant_model.policy.uses_lsq():
            summary["lsq_init_steps"] = {p: float(v) for p, v in
                                         _quantizer_state(variables)[1].items()}
        if "eval_quant" in stages and "quant_before" not in summary:
            summary["quant_before"] = quant_eval(variables, 0, "quant_before")
        workdir_lib.write_summary(workdir, summary)

    if quant_model is not None and "finetune" in stages:
        start_params = variables["params"]
        fitted = trainer.Trainer(quant_eval, config, config, finetune_dir, info.num_train,
                                 eval_prefix="quant", name="finetune").fit(variables)
        variables = fitted.variables
        if fitted.grad_noise is not None:
            summary["grad_noise"] = fitted.grad_noise
        summary["quant_after"] = quant_eval(variables, 0, "quant_after")
        if config.analysis.weight_similarity:
            summary["weight_cosine"] = analysis.weight_similarity(start_params,
                                                                  variables["params"])
        if "correct" in summary.get("quant_before", {}):
            summary["after_vs_before"] = _paired(summary["quant_before"],
                                                 summary["quant_after"])
        workdir_lib.write_summary(workdir, summary)
    writer.flush()
    console.show(_result_table(summary, policy_lib.describe(
        quant_model.policy if quant_model is not None else None), workdir))
    return {**summary, "variables": variables}


def _calibrated(config: ml_collections.ConfigDict, stages: set[str],
                summary: dict[str, Any], quant_model, variables: dict[str, Any],
                mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """``variables`` with the quantizer state every quantized stage starts from: FAQ's
    activation l's (FAQ section 3) and LSQ's initial steps (``calibrate.initialize``).

    With ``calib.enabled`` a quantized network never runs on the uncalibrated defaults: the
    ``calibrate`` stage calibrates (FAQ: percentiles of ``calib.num_batches`` batches; LSQ:
    activation steps from the first of them, weight steps from the weights); without it, the
    values an earlier run of this workdir calibrated are reused, and if there are none,
    calibration runs anyway (with a warning saying so). ``calib.enabled=False`` keeps the
    activations' defaults, FAQ's no-calibration control (LSQ's weight steps still start from
    the weights).
    """
    if not config.calib.enabled:
        return calibrate_lib.initialize(quant_model, variables, None)
    if "calibrate" not in stages:
        if "calibrated_lsb" in summary:
            logging.info("using the activation l's calibrated by an earlier run of this workdir")
            variables = {**variables,
                         "quant": _unflat_lsbs(summary["calibrated_lsb"], variables["quant"])}
            if quant_model.policy.uses_lsq():
                variables["params"] = _restored_steps(summary, variables["params"])
            return variables
        logging.warning("config.stages=%r has no 'calibrate' and this workdir holds no "
                        "calibrated l's: calibrating now (config.calib.enabled=True). Set "
                        "config.calib.enabled=False for the uncalibrated control.",
                        config.stages)
    local = sharding.check_divisible(config.batch_size, "batch_size")
    batches = data_lib.calibration_batches(
        config, local_batch_size=local, num_batches=config.calib.num_batches,
        process_index=jax.process_index(), process_count=jax.process_count())
    bsh = sharding.batch_sharding(mesh)
    bar = console.progress(config.calib.num_batches, "calibrate", unit="batch")

    def images():
        for b in batches:
            yield sharding.to_global(b, bsh)["image"]
            bar.update(1)

    try:
        out = calibrate_lib.initialize(quant_model, sharding.replicate(variables, mesh),
                                       images())
    finally:
        bar.close()
    learned = ("quant", "params") if quant_model.policy.uses_lsq() else ("quant",)
    return {**variables, **jax.device_get({k: out[k] for k in learned})}


def _restored_steps(summary: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the LSQ steps an earlier run of this workdir started from."""
    flat, saved = keypaths.flatten(params), summary.get("lsq_init_steps", {})
    current = [p for p in flat if lsq.is_step_param(p.rsplit(keypaths.SEP, 1)[-1])]
    if sorted(current) != sorted(saved):
        raise ValueError("the LSQ steps in summary.json do not fit this network's quantizers "
                         f"(missing {sorted(set(current) - set(saved))[:3]}); use a new "
                         "--workdir")
    return keypaths.unflatten({**flat, **{p: np.asarray(saved[p], np.asarray(flat[p]).dtype)
                                          for p in current}})


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


def _paired(base: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """``paired.compare`` of two evaluations of the same split (their packed hits)."""
    n = int(base["count"])
    return paired.compare(paired.unpack(base["correct"], n),
                          paired.unpack(run["correct"], int(run["count"])))


def _result_table(summary: dict[str, Any], precision: str, workdir: str) -> str:
    """The run's results for the console: the accuracy of each network, after - before
    fine-tuning with its paired interval, and where results and checkpoints are."""
    rows = [("fp32", summary.get("fp32")),
            (f"{precision} before fine-tuning", summary.get("quant_before")),
            (f"{precision} after fine-tuning", summary.get("quant_after"))]
    width = max(32, *(len(name) for name, _ in rows))
    lines = [f"{'network':{width}s} {'top-1':>7s} {'top-5':>7s}"]
    lines += [f"{name:{width}s} {r['top1']:7.2f} {r['top5']:7.2f}" for name, r in rows if r]
    if "after_vs_before" in summary:
        lines.append(paired.describe(summary["after_vs_before"]))
    if "weight_cosine" in summary:
        lines.append(f"mean weight cosine (start vs end): {summary['weight_cosine']['mean']:.4f}")
    lines.append(f"results: {os.path.join(workdir, workdir_lib.SUMMARY)}")
    ckpts = [f"{d} ({what})" for d, what in
             ((workdir_lib.finetune_dir(workdir), "fine-tuned"),
              (workdir_lib.pretrain_dir(workdir), "fp32"))
             if epath.Path(d).exists()]
    if ckpts:
        lines.append("checkpoints: " + ", ".join(ckpts))
    return "\n".join(lines)
