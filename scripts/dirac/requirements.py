"""Print the installed DIRAC's requirements, one per line, for pip (used by the DIRAC installs).

``pip install DIRAC`` fails on Debian 12: gfal2-python does not build against Debian's gfal2
2.21 (only DIRAC's GFAL2 storage plugins use it). The project installs DIRAC with --no-deps and
then these requirements, read from DIRAC's own metadata, without gfal2-python.

Usage: requirements.py [server]   (``server`` adds the server extra)
"""

from __future__ import annotations

import sys
from importlib.metadata import requires

__all__ = ["dirac_requirements"]

EXCLUDED = ("gfal2-python",)


def dirac_requirements(*, server: bool) -> list[str]:
    """Return DIRAC's requirement strings minus the excluded ones, markers removed.

    Parameters
    ----------
    server : bool
        Include the ``server`` extra.

    Returns
    -------
    list of str
        Requirement specifiers for pip.
    """
    wanted = []
    for requirement in requires("DIRAC") or []:
        spec, _, marker = requirement.partition(";")
        name = spec.strip().split("[")[0]
        for char in "<>=!~ ":
            name = name.split(char)[0]
        if name.lower() in EXCLUDED:
            continue
        if "extra ==" in marker and not (server and 'extra == "server"' in marker):
            continue
        wanted.append(spec.strip())
    return wanted


if __name__ == "__main__":
    print("\n".join(dirac_requirements(server=sys.argv[1:] == ["server"])))
