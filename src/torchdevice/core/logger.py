"""torchdevice's logger: stdlib ``logging`` under the ``torchdevice`` name.

Silent by default, with one exception: when something cannot be emulated faithfully, one
WARNING line per topic per process (:func:`warn_unfaithful`). ``TORCHDEVICE_LOG_LEVEL``
(DEBUG, INFO, WARNING or ERROR) sets the level; at DEBUG each intercepted CUDA/MPS API is logged
with the user's ``file:line`` (see ``torchdevice.report``).

Lines go to the process's current ``sys.stderr`` as ``[torchdevice] LEVEL message``, unless the
application configured logging itself (the root logger has handlers): then records reach its
handlers, in its format, and this module prints nothing of its own.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

LOGGER_NAME = "torchdevice"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LEVEL_ENV = "TORCHDEVICE_LOG_LEVEL"

logger = logging.getLogger(LOGGER_NAME)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, unless the application has handlers."""

    _torchdevice = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("[torchdevice] %(levelname)s %(message)s"))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass

    def emit(self, record: logging.LogRecord) -> None:
        # The record propagates to the root logger too: where the application configured
        # logging, its handlers print it, and a second copy here would be a duplicate.
        if logging.getLogger().handlers:
            return
        super().emit(record)


if not any(getattr(h, "_torchdevice", False) for h in logger.handlers):
    logger.addHandler(_StderrHandler())


def configure_from_env() -> None:
    """Honour TORCHDEVICE_LOG_LEVEL; without it, WARNING (only unfaithful emulation is reported).

    Without the variable the level is set only if nobody set one: an application's
    ``logging.getLogger("torchdevice").setLevel(...)`` made before activation stays.
    """
    value = requested_level()
    if value is None:
        if logger.level == logging.NOTSET:
            # Not the root's level: an application logging at INFO must not see torchdevice's INFO.
            logger.setLevel(logging.WARNING)
        return
    logger.setLevel(value)


def requested_level() -> str | None:
    """The level TORCHDEVICE_LOG_LEVEL names (None when unset); ValueError naming the valid ones."""
    value = os.environ.get(LEVEL_ENV, "").strip().upper()
    if value and value not in LEVELS:
        raise ValueError(f"{LEVEL_ENV}={value!r} is not valid; choose one of: {', '.join(LEVELS)}")
    return value or None


_unfaithful: dict[str, str] = {}
_unfaithful_lock = threading.Lock()


def warn_unfaithful(topic: str, message: str) -> bool:
    """Log ``message`` at WARNING the first time ``topic`` comes up in this process.

    For what the emulated device cannot do as a GPU would (a reading it cannot take, state it
    cannot keep); never for what it does faithfully, however differently. Returns True when
    this call logged. The topics raised so far are listed by :func:`unfaithful_topics`.
    """
    with _unfaithful_lock:
        if topic in _unfaithful:
            return False
        _unfaithful[topic] = message
    logger.warning("%s", message)
    return True


def unfaithful_topics() -> dict[str, str]:
    """Every topic :func:`warn_unfaithful` raised in this process, with its message."""
    with _unfaithful_lock:
        return dict(_unfaithful)
