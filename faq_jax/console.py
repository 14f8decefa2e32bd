"""What the command-line programs show: quiet logs, one progress bar per stage, one-line
errors.

- :func:`configure`: by default only warnings and errors are logged, by faq_jax and by every
  library (absl, orbax, jax, TensorFlow); ``--verbosity=0`` (absl's INFO) or higher brings
  their INFO logs back and prints the traceback of an error.
- :func:`progress`: a tqdm bar with rate and ETA on a terminal; where the output is not a
  terminal (a log file, a batch job) the same line, plainly, every :data:`LOG_INTERVAL_S`
  seconds and when the stage ends. Only process 0 of a multi-host job draws.
- :func:`exit_on_error`: bad input (a config value, a file, a workdir, a checkpoint, a
  diverged run) ends the program with status 1 and one line ``error: what, where, how to
  fix``; an unexpected exception (a bug) keeps its traceback; Ctrl-C ends with one line.
"""

from __future__ import annotations

import contextlib
import logging as py_logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

LOG_INTERVAL_S = 30.0  # plain progress lines when the output is not a terminal
_PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} " \
                "[{elapsed}<{remaining}, {rate_fmt}{postfix}]"

_state = {"verbose": True}  # library use (notebooks, tests): logging as absl sets it

# Failures of input, not of the program: each says what is wrong and how to fix it.
# ValueError covers the config checks, CheckpointError, ExportError and JSON errors;
# OSError a missing, unreadable or unwritable file; FloatingPointError a diverged run
# (trainer.NonFiniteLossError); OverflowError the integer executor's refusals.
USER_ERRORS = (ValueError, OSError, FloatingPointError, OverflowError)


def configure(verbosity: int | None) -> None:
    """Sets what is logged: ``None`` (the flag not given) warnings and errors only; an int,
    absl's ``--verbosity`` (0: INFO, 1: DEBUG), also tracebacks of errors."""
    from absl import logging  # noqa: PLC0415

    _state["verbose"] = verbosity is not None and verbosity >= 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if _state["verbose"] else "2")
    if _state["verbose"]:
        logging.set_verbosity(verbosity)
        return
    logging.set_verbosity(logging.WARNING)
    py_logging.getLogger().setLevel(py_logging.WARNING)  # jax, orbax's python loggers


def configure_from_flags() -> None:
    """:func:`configure` from absl's parsed ``--verbosity`` (None when not given)."""
    from absl import flags  # noqa: PLC0415

    flag = flags.FLAGS["verbosity"]
    configure(flag.value if flag.present else None)


def verbose() -> bool:
    """Whether INFO logs and tracebacks are shown (see :func:`configure`)."""
    return _state["verbose"]


def _is_main_process() -> bool:
    if "jax" not in sys.modules:
        return True
    import jax  # noqa: PLC0415

    return jax.process_index() == 0


class _Lines:
    """A stream for tqdm that turns each redraw (``\\r...``) into one plain line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").rstrip()
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _plain_bar_class() -> type:
    from tqdm import std  # noqa: PLC0415

    class PlainBar(std.tqdm):
        """Silent for its first ``delay`` seconds; a stage that ends sooner still writes
        its one closing line."""

        def close(self):
            if not self.disable and self.last_print_t < self.start_t + self.delay:
                self.refresh()  # close() itself would skip a bar never displayed
            super().close()

    return PlainBar


def progress(total: int, desc: str, *, unit: str = "step", initial: int = 0,
             transient: bool = False, stream: TextIO | None = None) -> Any:
    """A tqdm bar over ``total`` units named ``desc`` (call ``update``/``close``).

    On a terminal it redraws in place; elsewhere it writes a plain line every
    :data:`LOG_INTERVAL_S` seconds and one when it closes. ``transient``: a sub-stage
    (an evaluation inside training): removed when done on a terminal, silent elsewhere.
    Disabled on processes other than 0.
    """
    from tqdm import auto as tqdm_auto  # noqa: PLC0415

    stream = sys.stderr if stream is None else stream
    tty = stream.isatty()
    disable = not _is_main_process() or (transient and not tty)
    if tty:
        return tqdm_auto.tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream,
                              leave=not transient, disable=disable, dynamic_ncols=True)
    return _plain_bar_class()(total=total, initial=initial, desc=desc, unit=unit,
                              file=_Lines(stream), mininterval=LOG_INTERVAL_S,
                              delay=LOG_INTERVAL_S, miniters=1, bar_format=_PLAIN_FORMAT,
                              disable=disable)


def show(text: str) -> None:
    """Prints a result on stdout (process 0 only)."""
    if _is_main_process():
        print(text, flush=True)


def warn(text: str) -> None:
    """Prints a note on stderr (process 0 only), whatever the verbosity."""
    if _is_main_process():
        print(text, file=sys.stderr, flush=True)


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (OSError: ``strerror: filename``)."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        text = f"{e.strerror}: {e.filename}"
        if isinstance(e, PermissionError):
            text += " (check its permissions, or choose another path)"
        return text
    if len(e.args) == 1 and isinstance(e.args[0], BaseException):  # ConfigDict's wrapping
        return one_line(e.args[0])
    text = str(e).strip()
    if isinstance(e, KeyError) and len(e.args) == 1:
        text = str(e.args[0])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) or type(e).__name__


def is_user_error(e: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether ``e`` is bad input (:data:`USER_ERRORS`, ``extra``, or a TensorFlow data
    error, e.g. an unreadable TFDS record) rather than a bug."""
    return isinstance(e, (*USER_ERRORS, *extra)) or \
        type(e).__module__.startswith("tensorflow.python.framework.errors")


@contextlib.contextmanager
def exit_on_error(extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turns a user error (:func:`is_user_error`) into ``error: ...`` on stderr and exit
    status 1; with :func:`verbose`, the traceback comes first. Other exceptions pass. Ctrl-C
    ends with ``interrupted`` and status 130 (a training run saves first: see
    :class:`faq_jax.checkpointing.Checkpointer`)."""
    try:
        yield
    except KeyboardInterrupt:
        if verbose():
            raise
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except Exception as e:
        if not is_user_error(e, extra):
            raise
        if verbose():
            import traceback  # noqa: PLC0415

            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def define_flags(define: Callable[[], None]) -> None:
    """Calls ``define`` (absl flag definitions); ml_collections reads the ``--config.*``
    overrides while defining a config flag, so a misspelled or mistyped override fails
    here: as one line naming the argument (and keeping its "Did you mean"), status 1."""
    from absl import flags  # noqa: PLC0415

    try:
        define()
    except (KeyError, AttributeError, ValueError, TypeError, flags.Error) as e:
        text = one_line(e)
        field = text.split()[0].strip("'\"") if text else ""
        args = [a for a in sys.argv[1:] if a.startswith("--") and "." in a.split("=")[0]
                and field and field in a.split("=")[0].split(".")]
        where = f" {args[0]}" if args else ""
        what = "no such field " if isinstance(e, (KeyError, AttributeError)) else ""
        print(f"error: bad config override{where}: {what}{text}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (``app.run(main, flags_parser=parse_flags)``) with an error as
    one line: ``error: <flag>: <why>``, status 1."""
    from absl import flags  # noqa: PLC0415

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {one_line(e)} (--helpfull lists the flags)", file=sys.stderr,
              flush=True)
        raise SystemExit(1) from None


def config_flag_value(name: str) -> Any:
    """The value of the ml_collections config flag ``--name``; a config file that is
    missing or fails to load raises ValueError naming it (ml_collections defers its error
    to the first use of the config, as a chain of tracebacks)."""
    from absl import flags  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415

    value = flags.FLAGS[name].value
    try:
        getattr(value, "keys", None)  # a config that failed to load raises on any use
    except OSError as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        last = [line.strip() for line in str(cause).splitlines() if line.strip()][-1:]
        path = config_flags.get_config_filename(flags.FLAGS[name])
        raise ValueError(f"--{name}={path}: cannot load the config file "
                         f"({''.join(last) or type(cause).__name__})") from e
    return value


@contextlib.contextmanager
def native_stderr_silenced(active: bool = True) -> Iterator[None]:
    """Sends what C/C++ code writes to file descriptor 2 to /dev/null while active (the
    INFO lines TensorFlow's native libraries print on import, whatever its log level)."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
