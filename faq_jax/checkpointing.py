"""Orbax checkpoints of the TrainState, and preemption handling.

A checkpoint that cannot be restored stops the run with an error
(:class:`faq_jax.workdir.CheckpointError`); it is never replaced by a fresh start. Where
the checkpoint folders of a workdir are is :mod:`faq_jax.workdir`'s business.
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from faq_jax import console, sharding, workdir
from faq_jax.workdir import CheckpointError


def _reader(directory: str) -> ocp.CheckpointManager:
    """A manager that only reads (it writes nothing, so read-only workdirs work)."""
    absl_logger = py_logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(py_logging.ERROR)  # orbax warns that read_only is read-only
    try:
        return ocp.CheckpointManager(
            workdir.absolute(directory), item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    finally:
        absl_logger.setLevel(level)


def latest_step(directory: str) -> int | None:
    """The newest checkpoint step in ``directory`` (None if none), touching nothing else."""
    return max(all_steps(directory), default=None)


def all_steps(directory: str) -> list[int]:
    """The checkpoint steps in ``directory``, ascending ([] if none)."""
    if not epath.Path(directory).exists():
        return []
    manager = _reader(directory)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def unreadable(directory: str, step: int, e: BaseException) -> CheckpointError:
    """The error for checkpoint ``step`` in ``directory`` that orbax could not read: one
    line (orbax's own can run to pages), what to do, and that nothing was changed."""
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return CheckpointError(
        f"cannot restore checkpoint step {step} in {directory} ({type(e).__name__}: {first}): "
        "it is damaged, or was written by an incompatible configuration. Nothing was "
        f"changed. Move {epath.Path(directory) / str(step)} away to use the step before it, "
        "restore the matching config, or use a new --workdir.")


def restore(directory: str, step: int | None = None) -> tuple[int, dict[str, Any]]:
    """(step, state as a dict of its fields) of checkpoint ``step`` (default: the newest)
    in ``directory``, read without writing, as the checkpoint's own structure (any
    TrainState) replicated over this process's devices, whatever the devices that wrote
    it; CheckpointError when there is none, no such step, or it is unreadable."""
    steps = all_steps(directory)
    if not steps:
        raise CheckpointError(f"{directory}: no checkpoint")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"{directory} has no checkpoint at step {step}; it has steps "
                              f"{', '.join(map(str, steps))}")
    manager = _reader(directory)
    try:
        meta = manager.item_metadata(step)
        repl = sharding.replicated(sharding.make_mesh())
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl),
                              getattr(meta, "tree", meta))
        state = manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax raises many types for damaged or foreign files
        raise unreadable(directory, step, e) from e
    finally:
        manager.close()
    return step, state if isinstance(state, dict) else dataclasses.asdict(state)


def restore_latest(directory: str) -> tuple[int, dict[str, Any]]:
    """:func:`restore` of the newest checkpoint."""
    return restore(directory)


class Checkpointer:
    """Periodic + final saves of a TrainState under ``directory``, and restore.

    While open it owns SIGTERM (a preemption notice: save at the next step, then stop) and,
    in a single-process job, SIGINT (Ctrl-C: the same; a second Ctrl-C stops at once);
    :meth:`close` gives the previous handlers back.
    """

    def __init__(self, directory: str, *, keep: int = 2, save_every_steps: int = 1000):
        self.directory = epath.Path(workdir.absolute(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               save_interval_steps=max(1, save_every_steps))
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._sigterm = threading.Event()
        self._sigint = threading.Event()
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
            if jax.process_count() == 1:  # other processes would never join the save
                self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigterm(self, signum, frame):  # noqa: ARG002 - signal signature
        logging.warning("SIGTERM received: saving a checkpoint at the next step, then exiting.")
        self._sigterm.set()

    def _on_sigint(self, signum, frame):  # noqa: ARG002 - signal signature
        if self._sigint.is_set():  # the second Ctrl-C: stop now, as Python would
            raise KeyboardInterrupt
        console.warn("Ctrl-C: saving a checkpoint at the next step, then stopping "
                     "(Ctrl-C again to stop at once, losing the steps since the last one).")
        self._sigint.set()

    @property
    def stop_reason(self) -> str:
        """Why :meth:`should_stop` said stop: ``"interrupted"`` (Ctrl-C) or ``"preempted"``."""
        return "interrupted" if self._sigint.is_set() else "preempted"

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state: Any) -> Any | None:
        """Restores the latest checkpoint into ``abstract_state``'s structure, or None."""
        step = self.manager.latest_step()
        if step is None:
            return None
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # orbax raises many types for damaged or foreign files
            raise unreadable(str(self.directory), step, e) from e

    def should_stop(self, step: int) -> bool:
        """True when the job is being preempted (SIGTERM or the JAX preemption notice).

        With several processes only JAX's preemption sync point counts: a SIGTERM seen by
        one process alone would send it into a collective save the others never join.
        """
        if jax.process_count() == 1 and (self._sigterm.is_set() or self._sigint.is_set()):
            return True
        return self.manager.reached_preemption(step)

    def will_save(self, step: int) -> bool:
        """Whether :meth:`save` at ``step`` writes a checkpoint (the periodic policy)."""
        return self.manager.should_save(step)

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
