"""Orbax checkpoints of the TrainState, a workdir guard, and preemption handling.

A workdir belongs to one experiment: ``experiment.json`` records what defines it (arch,
classes, precision, dataset) and a run with a different definition refuses to touch it.
A checkpoint that cannot be restored stops the run with an error; it is never replaced
by a fresh start.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class CheckpointError(ValueError):
    """A checkpoint or workdir that cannot be used; the message says what to do."""


def check_workdir(workdir: str, experiment: dict[str, Any]) -> None:
    """Records ``experiment`` in the workdir, or checks it matches what is there."""
    path = epath.Path(workdir) / "experiment.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is corrupt ({e}); it identifies the experiment "
                                  "whose checkpoints live in this workdir. Restore it or "
                                  "use a new --workdir.") from e
        diff = {k: (old.get(k), v) for k, v in experiment.items() if old.get(k) != v}
        if diff:
            details = "; ".join(f"{k}: workdir has {a!r}, config has {b!r}"
                                for k, (a, b) in diff.items())
            raise CheckpointError(f"workdir {workdir} holds another experiment ({details}). "
                                  "Use a new --workdir, or delete this one deliberately.")
        return
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / "experiment.json.tmp"
        tmp.write_text(json.dumps(experiment, indent=2, sort_keys=True))
        os.replace(tmp, path)


def absolute(path: str) -> str:
    """``path`` made absolute when it is local (orbax refuses relative paths); URLs as given."""
    return path if "://" in str(path) else os.path.abspath(path)


def latest_step(directory: str) -> int | None:
    """The newest checkpoint step in ``directory`` (None if none), touching nothing else."""
    if not epath.Path(directory).exists():
        return None
    manager = ocp.CheckpointManager(absolute(directory))
    try:
        return manager.latest_step()
    finally:
        manager.close()


class Checkpointer:
    """Periodic + final saves of a TrainState under ``directory``, and restore.

    While open it owns SIGTERM (a preemption notice: save at the next step, then stop);
    :meth:`close` gives the previous handler back.
    """

    def __init__(self, directory: str, *, keep: int = 2, save_every_steps: int = 1000):
        self.directory = epath.Path(absolute(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               save_interval_steps=max(1, save_every_steps))
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._sigterm = threading.Event()
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):  # noqa: ARG002 - signal signature
        logging.warning("SIGTERM received: saving a checkpoint at the next step, then exiting.")
        self._sigterm.set()

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
            raise CheckpointError(
                f"cannot restore checkpoint step {step} in {self.directory}: "
                f"{type(e).__name__}: {e}\nIt is corrupt or was written by an incompatible "
                "configuration. Nothing was overwritten. Move it away to start over, or "
                "restore the matching config."
            ) from e

    def should_stop(self, step: int) -> bool:
        """True when the job is being preempted (SIGTERM or the JAX preemption notice).

        With several processes only JAX's preemption sync point counts: a SIGTERM seen by
        one process alone would send it into a collective save the others never join.
        """
        if jax.process_count() == 1 and self._sigterm.is_set():
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
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
