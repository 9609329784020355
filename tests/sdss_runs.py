"""The shared SDSS run 6377 and copies of it relabelled as other runs (real files, new headers)."""

from __future__ import annotations

import shutil
from pathlib import Path

from astropy.io import fits

SHARED_RUN = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sdss-stripe82" / "6377"
)


def relabel_run(root: Path, run: int, *, keep_run_in: tuple[str, ...] = ()) -> Path:
    """Copy run 6377 under ``root/<run>`` with RUN (and the date) changed in every header.

    File names take the new run number. The fpC frames move one day later (``TAI``,
    ``DATE-OBS``). Files whose name starts with one of ``keep_run_in`` keep RUN 6377 in their
    header (a deliberately mismatched companion).

    Returns
    -------
    pathlib.Path
        The new run directory.
    """
    target = root / str(run)
    for source in sorted(SHARED_RUN.rglob("*.fit*")):
        relative = source.relative_to(SHARED_RUN)
        name = source.name.replace("006377", f"{run:06d}")
        out = target / relative.parent / name
        out.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("asTrans"):
            shutil.copyfile(source, out)
            continue
        with fits.open(source) as hdus:
            header = hdus[0].header
            if not name.startswith(keep_run_in):
                header["RUN"] = run
            if name.startswith("fpC"):
                header["TAI"] = float(header["TAI"]) + 86400.0
                header["DATE-OBS"] = "2006-09-21"
            hdus.writeto(out)
    return target


def shared_run_copy(root: Path) -> Path:
    """A plain copy of run 6377 under ``root/6377`` (tests may then edit it)."""
    target = root / "6377"
    shutil.copytree(SHARED_RUN, target)
    return target
