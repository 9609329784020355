"""Typed failures: stage errors that carry numbers, and orchestration errors that carry exit codes.

`StageError` and its subclasses are raised inside jobs; the run ledger stores their class and
metadata against the tile. `CampaignError` and its subclasses are raised by the orchestration
(`dcflow.orchestration`) for what a user can fix (a missing config, an unknown profile, an
unreadable ledger); the `dcflow` command reports them as ``dcflow <verb>: <message>`` and exits
with the error's `CampaignError.exit_code`. Anything else is a bug and ends in a traceback.
"""

from __future__ import annotations

__all__ = [
    "BackendUnreachableError",
    "CalibrationError",
    "CampaignError",
    "CancelTimeoutError",
    "ConfigInvalidError",
    "ConfigMissingError",
    "DriverBusyError",
    "ForeignInputError",
    "InputDataError",
    "InputMissingError",
    "LedgerUnreadableError",
    "ProfileUnknownError",
    "StageError",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 4


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


class CampaignError(Exception):
    """A campaign cannot be planned, run or inspected as asked; the user can fix the cause.

    The message says what was wrong and names the file, profile or run concerned. The `dcflow`
    command prints it and exits with `exit_code`.
    """

    exit_code: int = EXIT_FAILED
    """The `dcflow` command's exit status for this error (1 failure, 2 usage, 4 backend)."""


class ConfigInvalidError(CampaignError, ValueError):
    """The campaign config is not valid YAML, breaks the schema, or asks for the impossible."""

    exit_code = EXIT_USAGE


class ConfigMissingError(CampaignError, FileNotFoundError):
    """The campaign config file does not exist."""

    exit_code = EXIT_USAGE


class ProfileUnknownError(CampaignError, ValueError):
    """The profile is neither a directory nor a name under the checkout's profiles/."""

    exit_code = EXIT_USAGE


class InputMissingError(CampaignError, FileNotFoundError):
    """An input the campaign needs is absent (the registry before `dcflow ingest`)."""

    exit_code = EXIT_FAILED


class ForeignInputError(CampaignError, FileExistsError):
    """`dcflow simulate` would overwrite a file of the input tree that it did not write."""

    exit_code = EXIT_FAILED


class LedgerUnreadableError(CampaignError):
    """The run ledger cannot be opened or read (not an SQLite file, no permission)."""

    exit_code = EXIT_FAILED


class BackendUnreachableError(CampaignError, ConnectionError):
    """The profile's backend does not answer or cannot take jobs now."""

    exit_code = EXIT_UNREACHABLE


class CancelTimeoutError(CampaignError, TimeoutError):
    """A run's Snakemake process outlived the cancel's timeout."""

    exit_code = EXIT_FAILED


class DriverBusyError(CampaignError, RuntimeError):
    """Another sharded driver runs in this working directory."""

    exit_code = EXIT_FAILED


class RerunTooLargeError(CampaignError, RuntimeError):
    """``rerun --failed`` selected more jobs than one Snakemake DAG should hold."""

    exit_code = EXIT_FAILED
