"""Logging set-up shared by the thin scripts that Snakemake rules call."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["run_logged"]


def run_logged(main: Callable[..., Any], log_path: str | None, /, **kwargs: Any) -> Any:
    """Call ``main(**kwargs)`` with logging sent to ``log_path`` (and stderr).

    An exception is logged with its message (which names the file and the problem) before it
    propagates, so the job exits non-zero and its log says why.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logger = logging.getLogger(getattr(main, "__module__", "dcflow"))
    try:
        return main(**kwargs)
    except BaseException as exc:
        metadata = getattr(exc, "metadata", None)
        logger.error(
            "FAILED: %s: %s%s", type(exc).__name__, exc, f" {metadata}" if metadata else ""
        )
        raise
    finally:
        for handler in handlers:
            handler.flush()
