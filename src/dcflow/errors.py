"""Typed failures that carry numbers, so the run ledger can store why a tile failed."""

from __future__ import annotations

__all__ = ["CalibrationError", "InputDataError", "StageError"]


class StageError(Exception):
    """A stage could not produce a trustworthy result from its inputs.

    Parameters
    ----------
    message : str
        What was found and the likely cause.
    **metadata : int, float or str
        Numbers that describe the failure (``n_matched``, ``fit_rms_mas``...); kept JSON-safe.
    """

    def __init__(self, message: str, **metadata: int | float | str) -> None:
        for key, value in metadata.items():
            if not isinstance(value, int | float | str):
                raise TypeError(f"metadata {key!r} must be int, float or str, not {type(value)}")
        super().__init__(message)
        self.metadata = dict(metadata)


class InputDataError(StageError):
    """An input file or array is unusable (truncated, NaN-filled, missing header keys)."""


class CalibrationError(StageError):
    """An astrometric or photometric calibration did not converge to a credible solution."""
