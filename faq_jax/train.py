"""The FAQ pipeline: load -> eval fp32 -> calibrate -> eval quantized -> fine-tune -> eval.

:func:`train_and_evaluate` is what ``python -m faq_jax.main`` runs and what notebooks and
tests call. Each stage can be switched off in ``config.stages``; a restarted run resumes
from the latest checkpoint and skips the stages it already finished (their results are
in ``workdir/summary.json``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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
    lazy_imports,
    models,
    optim,
    sharding,
    steps,
)
from faq_jax import calibrate as calibrate_lib
from faq_jax import data as data_lib
from faq_jax import workdir as workdir_lib
from faq_jax.config import check as config_check


def _clu() -> tuple[Any, Any]:
    """clu's writers load TensorFlow: import them late, in the safe order."""
    lazy_imports.tensorflow()
    from clu import metric_writers, periodic_actions  # noqa: PLC0415

    return metric_writers, periodic_actions


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step."""


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


def make_evaluator(model) -> Any:
    """The jitted eval step of ``model``; build it once per model (it compiles once)."""
    return jax.jit(steps.make_eval_step(model))


def evaluate(eval_step: Any, variables: dict[str, Any], config: ml_collections.ConfigDict,
             mesh: jax.sharding.Mesh, writer: Any = None,
             step: int = 0, prefix: str = "eval") -> dict[str, float]:
    """Top-1/top-5/loss over the whole eval split (padded + masked: every example once)."""
    variables = sharding.replicate(variables, mesh)
    global_batch, local = sharding.padded_eval_batch(config.eval_batch_size)
    total = None
    it = data_lib.eval_batches(config, local_batch_size=local,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
    bsh = sharding.batch_sharding(mesh)
    n_total = data_lib.num_eval_batches(config, local_batch_size=local,
                                              process_count=jax.process_count())
    if config.max_eval_batches > 0:
        n_total = min(n_total, config.max_eval_batches)
    t0 = time.time()
    for i, batch in enumerate(it):
        if i >= n_total:
            break
        m = eval_step(variables, sharding.to_global(batch, bsh))
        total = m if total is None else jax.tree.map(jnp.add, total, m)
        if (i + 1) % 50 == 0:  # progress line; the batch count is known up front
            rate = (i + 1) * global_batch / max(time.time() - t0, 1e-9)
            eta = (n_total - i - 1) * global_batch / rate
            logging.info("%s: batch %d/%d, %.1f img/s, ETA %.0f s", prefix, i + 1, n_total,
                         rate, eta)
    total = jax.device_get(total)
    count = float(total["count"])
    result = {"top1": 100.0 * float(total["top1_sum"]) / count,
              "top5": 100.0 * float(total["top5_sum"]) / count,
              "loss": float(total["loss_sum"]) / count, "count": count}
    secs = time.time() - t0
    logging.info("%s: top1 %.2f top5 %.2f loss %.4f over %d examples (%.1f img/s)", prefix,
                 result["top1"], result["top5"], result["loss"], int(count),
                 count / max(secs, 1e-9))
    if writer is not None:
        writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in result.items()})
    return result


def _micro_batches(config, batches: optim.BatchSchedule, start: int, local_micro: int,
                   ) -> Iterator[dict[str, np.ndarray]]:
    """The micro-batch stream from position ``start``; its epoch e holds exactly what the
    schedule's epoch e consumes, so accumulated micro-batches are one batch's examples."""
    return data_lib.train_batches(
        config, local_batch_size=local_micro, start_step=start,
        process_index=jax.process_index(), process_count=jax.process_count(),
        epoch_steps=lambda e: batches.steps_in_epoch(e) * batches.accum(e))


def fit(model, eval_step: Any, variables: dict[str, Any], config: ml_collections.ConfigDict,
        run: ml_collections.ConfigDict, ckpt_dir: str, mesh: jax.sharding.Mesh,
        writer: Any, *, num_train: int, eval_prefix: str,
        analysis_out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains ``model`` from ``variables`` with ``run`` (num_epochs, batch sizes, optim).

    Resumes from ``ckpt_dir`` if it holds a checkpoint; evaluates with ``eval_step`` (from
    :func:`make_evaluator`) every ``config.eval_every_epochs``; returns the final variables.
    With ``config.analysis.grad_noise`` and a quantized ``model``, measures Fig. 1's gradient
    noise every step (costs one params-sized copy on device), logs ``grad_noise/<layer>`` at
    log steps and puts the last step's values in ``analysis_out["grad_noise"]``.
    """
    batches = optim.batch_schedule(run, num_train, int(run.num_epochs))
    tx = optim.make_optimizer(run.optim, batches)
    total = batches.total_steps()
    if config.max_steps > 0:
        total = min(total, config.max_steps)
    repl = sharding.replicated(mesh)
    state = jax.jit(lambda v: steps.create_state(v, tx, jax.random.key(config.seed + 1)),
                    out_shardings=repl)(sharding.replicate(variables, mesh))
    del variables  # donated below: never touch the initial arrays again
    ckpt = checkpointing.Checkpointer(ckpt_dir, keep=config.keep_checkpoints,
                                      save_every_steps=config.checkpoint_every_steps)
    try:
        return _fit_loop(model, eval_step, state, config, ckpt, batches, tx, total, mesh,
                         writer, eval_prefix=eval_prefix, analysis_out=analysis_out)
    finally:  # saves in flight complete; SIGTERM goes back to its previous handler
        ckpt.close()


def _fit_loop(model, eval_step, state, config, ckpt, batches, tx, total, mesh, writer, *,
              eval_prefix, analysis_out) -> dict[str, Any]:
    """fit's body: resume, the step loop, periodic/preemption/final saves."""
    repl = sharding.replicated(mesh)
    ckpt_dir = ckpt.directory
    restored = ckpt.restore(state)
    if restored is not None:
        state = restored
        logging.info("resumed from %s at step %d", ckpt_dir, int(state.step))
    start = int(jax.device_get(state.step))
    if start > total:
        raise workdir_lib.CheckpointError(
            f"the checkpoint in {ckpt_dir} is at step {start}, past this run's last step "
            f"{total} (were num_epochs or max_steps lowered?). Restore the setting, or use a "
            "new --workdir.")
    local_micro = sharding.check_divisible(batches.micro, "micro-batch size")
    train_step = jax.jit(steps.make_train_step(model, tx, aux_loss_weight=config.aux_loss_weight,
                                               label_smoothing=config.label_smoothing),
                         in_shardings=(repl, sharding.batch_sharding(mesh, 1)),
                         out_shardings=(repl, repl), donate_argnums=0)
    gn = gn_state = gn_cos = None
    if config.analysis.grad_noise and getattr(model, "policy", None) is not None:
        gn = analysis.GradNoise(model.policy, config.analysis.grad_noise_ema)
        gn_state = gn.init(state.params)
    epoch, in_epoch = batches.locate(start) if start < total else (0, 0)
    stream_pos = batches.micro_offset(epoch) + in_epoch * batches.accum(epoch)
    data = _micro_batches(config, batches, stream_pos, local_micro)
    report = _clu()[1].ReportProgress(num_train_steps=total, writer=writer)
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    t0, images = time.time(), 0
    bsh = sharding.batch_sharding(mesh, 1)
    for step in range(start, total):
        epoch, in_epoch = batches.locate(step)
        accum = batches.accum(epoch)
        micro = [next(data) for _ in range(accum)]
        batch = {k: np.stack([m[k] for m in micro]) for k in ("image", "label")}
        old_params = gn.copy(state.params) if gn else None  # the step donates state
        state, metrics = train_step(state, sharding.to_global(batch, bsh))
        if gn:
            gn_state, gn_cos = gn.update(gn_state, old_params, state.params)
        pending.append((step + 1, metrics))
        images += accum * batches.micro
        done = step + 1
        end_of_epoch = in_epoch + 1 == batches.steps_in_epoch(epoch)
        if done % config.log_every_steps == 0 or done == total or end_of_epoch:
            _flush(pending, writer, images / max(time.time() - t0, 1e-9))
            if gn:
                writer.write_scalars(done, {f"grad_noise/{k}": v for k, v in
                                            analysis.summarize_grad_noise(gn_cos)["per_layer"]
                                            .items()})
            pending, t0, images = [], time.time(), 0
        report(done)
        if ckpt.will_save(done):  # never checkpoint a diverged state
            _check_finite(pending)
            if not bool(_all_finite(state.params)):
                raise NonFiniteLossError(
                    f"parameters are not finite after step {done}: training diverged. Lower "
                    "config.optim.lr, or resume from an earlier checkpoint.")
            ckpt.save(done, state)
        if ckpt.should_stop(done):
            _flush(pending, writer, 0.0)
            if ckpt.latest_step() != done:  # the periodic save may have written it already
                ckpt.save(done, state, force=True)
            raise SystemExit(f"preempted: checkpoint saved at step {done} in {ckpt_dir}")
        if end_of_epoch and (epoch + 1) % max(1, config.eval_every_epochs) == 0 \
                and done < total:
            evaluate(eval_step, state.variables(), config, mesh, writer, done,
                     f"{eval_prefix}/epoch{epoch + 1}")
    _flush(pending, writer, 0.0)
    if ckpt.latest_step() != total:
        ckpt.save(total, state, force=True)
    if gn_cos is not None and analysis_out is not None:
        analysis_out["grad_noise"] = analysis.summarize_grad_noise(gn_cos)
    return jax.device_get(state.variables())


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_finite(pending: list[tuple[int, dict[str, jax.Array]]],
                  ) -> list[tuple[int, dict[str, Any]]]:
    """Fetches the queued metrics; raises NonFiniteLossError at the first non-finite loss."""
    fetched = jax.device_get(pending)
    for step, m in fetched:
        if not np.isfinite(m["loss"]):
            raise NonFiniteLossError(
                f"loss is {float(m['loss'])} at step {step}: training diverged. Lower "
                "config.optim.lr, check the data, or resume from an earlier checkpoint.")
    return fetched


def _flush(pending: list[tuple[int, dict[str, jax.Array]]],
           writer: Any, img_per_s: float) -> None:
    """Fetches queued step metrics (one host sync per log period) and checks for NaN."""
    if not pending:
        return
    fetched = _check_finite(pending)
    step, last = fetched[-1]
    scalars = {f"train/{k}": float(v) for k, v in last.items()}
    if img_per_s:
        scalars["train/images_per_sec"] = img_per_s
    writer.write_scalars(step, scalars)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the configured FAQ stages; returns (and writes) the summary of results."""
    stages, pol = config_check.validate(config)
    workdir = workdir_lib.absolute(workdir)
    workdir_lib.check_experiment(workdir, config_check.experiment_id(config))
    workdir_lib.write_config(workdir, config)  # the latest run's, for export and audit
    writer = _clu()[0].create_default_writer(workdir,
                                                  just_logging=jax.process_index() > 0)
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
    logging.info("process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
                 jax.devices())
    mesh = sharding.make_mesh()
    info = data_lib.dataset_info(config)
    dtype = layers.COMPUTE_DTYPES[config.compute_dtype]
    float_model = models.create(config.arch, num_classes=config.num_classes, dtype=dtype)
    quant_model = None if pol is None else models.create(
        config.arch, policy=pol, num_classes=config.num_classes, dtype=dtype)
    variables = _initial_variables(config, float_model, quant_model, info.image_shape)
    summary = workdir_lib.read_summary(workdir)
    summary.update(arch=config.arch, w_bits=config.quant.w_bits if pol else None,
                   a_bits=config.quant.a_bits if pol else None)
    finetune_dir = workdir_lib.finetune_dir(workdir)
    resumed_finetune = quant_model is not None and \
        checkpointing.latest_step(finetune_dir) is not None

    float_eval = make_evaluator(float_model)
    if "pretrain" in stages:
        pre = config.pretrain
        run = ml_collections.ConfigDict(dict(num_epochs=pre.num_epochs,
                                             batch_size=pre.batch_size, micro_batch_size=0,
                                             batch_schedule=(), optim=pre.optim))
        trained = fit(float_model, float_eval, variables, config, run,
                      workdir_lib.pretrain_dir(workdir), mesh, writer, num_train=info.num_train,
                      eval_prefix="fp32")
        variables = {**variables, **trained}
    if "eval_fp32" in stages and "fp32" not in summary:
        summary["fp32"] = evaluate(float_eval, variables, config, mesh, writer, 0, "fp32")
        workdir_lib.write_summary(workdir, summary)

    quant_eval = None if quant_model is None else make_evaluator(quant_model)
    if quant_model is not None and not resumed_finetune and \
            stages & {"calibrate", "eval_quant", "finetune"}:
        variables["quant"] = _calibrated_quant(config, stages, summary, quant_model, variables,
                                               mesh)
        if config.calib.enabled:
            summary["calibrated_lsb"] = _flat_lsbs(variables["quant"])
        if "eval_quant" in stages and "quant_before" not in summary:
            summary["quant_before"] = evaluate(quant_eval, variables, config, mesh, writer, 0,
                                               "quant_before")
        workdir_lib.write_summary(workdir, summary)

    if quant_model is not None and "finetune" in stages:
        start_params = variables["params"]
        extra: dict[str, Any] = {}
        variables = fit(quant_model, quant_eval, variables, config, config, finetune_dir,
                        mesh, writer, num_train=info.num_train, eval_prefix="quant",
                        analysis_out=extra)
        summary.update(extra)
        summary["quant_after"] = evaluate(quant_eval, variables, config, mesh, writer,
                                          0, "quant_after")
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
