"""Keep the loopback DIRAC on loopback: installed into the DIRAC server venv by scripts/dirac-up.

DISET services bind every interface (DIRAC 9.1 hard-codes the empty host). When the variable
DCFLOW_DIRAC_LOOPBACK=1 is set (dirac-up sets it for the processes it starts), a bind to the
wildcard address is turned into a bind to 127.0.0.1 (as ::ffff:127.0.0.1 on the dual-stack IPv6
sockets DISET opens), so nothing listens beyond this machine. A .pth line imports this module.
"""

from __future__ import annotations

import os
import socket

__all__ = ["loopback_address"]

_WILDCARDS = ("", "0.0.0.0", "::")


def loopback_address(family: int, address: object) -> object:
    """Return ``address`` with a wildcard host replaced by the loopback address of ``family``.

    Parameters
    ----------
    family : int
        The socket's address family (``socket.AF_INET`` or ``socket.AF_INET6``).
    address : object
        The address passed to ``bind``; only tuples with a wildcard host are changed.

    Returns
    -------
    object
        The address to bind.
    """
    if not isinstance(address, tuple) or not address or address[0] not in _WILDCARDS:
        return address
    if family == socket.AF_INET6:
        return ("::ffff:127.0.0.1", *address[1:])
    if family == socket.AF_INET:
        return ("127.0.0.1", *address[1:])
    return address


if os.environ.get("DCFLOW_DIRAC_LOOPBACK") == "1":
    _bind = socket.socket.bind

    def _loopback_bind(self: socket.socket, address: object) -> None:
        _bind(self, loopback_address(self.family, address))

    socket.socket.bind = _loopback_bind
