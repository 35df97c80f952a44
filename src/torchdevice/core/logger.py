"""torchdevice's logger: stdlib ``logging``, silent unless ``TORCHDEVICE_LOG_LEVEL`` asks."""

from __future__ import annotations

import logging
import os

LOGGER_NAME = "torchdevice"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

logger = logging.getLogger(LOGGER_NAME)
logger.addHandler(logging.NullHandler())


def configure_from_env() -> None:
    """Honour TORCHDEVICE_LOG_LEVEL; without it the library logs nothing below WARNING."""
    value = os.environ.get("TORCHDEVICE_LOG_LEVEL", "").strip().upper()
    if not value:
        return
    if value not in LEVELS:
        raise ValueError(f"TORCHDEVICE_LOG_LEVEL={value!r} is not valid; choose one of: {', '.join(LEVELS)}")
    logger.setLevel(value)
    if not any(getattr(h, "_torchdevice", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[torchdevice] %(levelname)s %(message)s"))
        handler._torchdevice = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
