"""``dcflow serve``: the web side of the live dashboard (Starlette, Jinja2 templates, htmx).

The page is rendered on the server; htmx (vendored, no build step) polls one fragment per
campaign every few seconds and swaps it in, so the browser runs no code of ours. Every
request refreshes the campaign's `CampaignBoard` from the ledger (a read of what changed).
Bound to loopback by default; any other address needs a token, given as a bearer header, a
``token`` query parameter (which sets a cookie) or that cookie; it is never logged.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from dcflow.dashboard.board import BoardView, CampaignBoard
from dcflow.errors import ConfigInvalidError, ConfigMissingError

__all__ = [
    "POLL_SECONDS",
    "TOKEN_ENV",
    "TokenGate",
    "dashboard_app",
    "find_campaigns",
    "is_loopback",
    "read_token",
]

logger = logging.getLogger(__name__)

POLL_SECONDS = 2
"""How often the page asks for news, s."""
TOKEN_ENV = "DCFLOW_SERVE_TOKEN"
"""Environment variable holding the access token for a non-loopback address."""
_HERE = Path(__file__).parent
_COOKIE = "dcflow_token"


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | os.PathLike | None) -> str | None:
    """The access token: the file's first line if given, else `TOKEN_ENV` (None if neither).

    Raises
    ------
    ConfigInvalidError
        The file cannot be read or is empty.
    """
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip().splitlines()
        except OSError as exc:
            raise ConfigInvalidError(f"{token_file}: cannot read the token file ({exc})") from exc
        if not token or not token[0].strip():
            raise ConfigInvalidError(f"{token_file}: the token file is empty")
        return token[0].strip()
    return os.environ.get(TOKEN_ENV) or None


class TokenGate:
    """ASGI middleware letting through only requests that carry the token."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.token = token

    def _presented(self, scope) -> tuple[str | None, bool]:
        """The token a request carries, and whether it came in the query (set a cookie)."""
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][0], True
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == _COOKIE:
                return value, False
        return None, False

    async def __call__(self, scope, receive, send) -> None:
        """Answer 401 unless the request carries the token; set the cookie if from the query."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented, from_query = self._presented(scope)
        if presented is None or not secrets.compare_digest(presented, self.token):
            response = PlainTextResponse("a valid token is required", status_code=401)
            await response(scope, receive, send)
            return
        if not from_query:
            await self.app(scope, receive, send)
            return
        cookie = f"{_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode()

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def find_campaigns(path: str | os.PathLike) -> list[Path]:
    """Campaign configs to serve: ``path`` itself if a file, else ``*/config.yaml`` under it.

    A directory may itself hold a ``config.yaml`` (one campaign) or hold campaigns one or two
    levels down (every campaign under it).

    Raises
    ------
    ConfigMissingError
        Nothing to serve at ``path``.
    """
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ConfigMissingError(f"{root}: no such campaign config or directory")
    if (root / "config.yaml").is_file():
        return [root / "config.yaml"]
    found = sorted({*root.glob("*/config.yaml"), *root.glob("*/*/config.yaml")})
    if not found:
        raise ConfigMissingError(
            f"{root}: no campaign (no config.yaml in it or its subdirectories)"
        )
    return found


def _fmt(value: float | None, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def _duration(hours: float | None, empty: str = "unknown") -> str:
    """Hours as a person reads them: seconds, minutes, hours or days."""
    if hours is None:
        return empty
    seconds = hours * 3600.0
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


SKY_WIDTH_PX = 1000
"""Widest sky map drawn, pixels (cells shrink to fit)."""


def _sky_layout(view: BoardView) -> dict:
    """Squares of the sky map: patches (or tracts) placed by tract centre, east to the left.

    The smallest distance between two tract centres is one tract's width of cells; cells
    shrink (to 2 pixels) so that the map stays within `SKY_WIDTH_PX`.
    """
    side = max(view.n_patches_side, 1)
    centres = view.tract_centres_deg
    if not view.patches or not centres:
        return {"cells": [], "width": 0, "height": 0, "tracts": []}
    shown = sorted({p.tract for p in view.patches if p.tract in centres})
    ra = np.array([centres[t][0] for t in shown])
    dec = np.array([centres[t][1] for t in shown])
    x_deg = -(ra - ra.max()) * np.cos(np.radians(dec.mean()))
    y_deg = dec.max() - dec
    points = np.stack([x_deg, y_deg], axis=1)
    spacing = np.inf
    if len(points) > 1:
        distance = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
        spacing = float(distance[distance > 1e-9].min(initial=np.inf))
    if not np.isfinite(spacing):
        spacing = 1.0
    span = max(float(x_deg.max()), 1e-9) / spacing + 1
    cell = int(np.clip(SKY_WIDTH_PX / (span * side * 1.1), 2, 18))
    label = 14 if cell >= 8 else 0
    block = max(side * cell * 1.1, 56 if label else 0)  # room for "tract N" above a tract
    where = {
        t: (int(px / spacing * block) + 8, int(py / spacing * (block + label)) + 8 + label)
        for t, px, py in zip(shown, x_deg, y_deg, strict=True)
    }
    cells = []
    for p in view.patches:
        if p.tract not in where:
            continue
        x0, y0 = where[p.tract]
        if p.failed:
            state = "failed"
        elif p.running:
            state = "running"
        elif p.to_run == 0:
            state = "done"
        elif p.to_run < p.total:
            state = "partial"
        else:
            state = "queued"
        cells.append(
            {
                "x": x0 + p.patch_x * cell,
                "y": y0 + (side - 1 - p.patch_y) * cell,
                "size": max(cell - (2 if cell > 4 else 0), 1),
                "state": state,
                "title": f"tract {p.tract}"
                + (f" patch {p.patch_x},{p.patch_y}" if view.n_patches_side > 1 else "")
                + f": {p.total - p.to_run}/{p.total} done, {p.running} running, {p.failed} failed",
            }
        )
    tracts = (
        [{"label": f"tract {t}", "x": where[t][0], "y": where[t][1] - 4} for t in shown]
        if label
        else []
    )
    return {
        "cells": cells,
        "tracts": tracts,
        "width": max(c["x"] for c in cells) + cell + 8,
        "height": max(c["y"] for c in cells) + cell + 8,
        "unit": "patch" if view.n_patches_side > 1 else "tract",
    }


def _rerun_commands(view: BoardView) -> list[str]:
    stages = sorted({f.stage for f in view.failed})
    base = f"dcflow rerun --failed --config {view.config_path}"
    if view.n_failed and len(stages) > 1:
        return [base] + [f"{base} --stage {s}" for s in stages]
    return [base] if view.n_failed else []


def _context(board: CampaignBoard) -> dict:
    board.refresh()
    view = board.view()
    totals = view.stage_totals()
    return {
        "view": view,
        "totals": totals,
        "sky": _sky_layout(view),
        "rerun": _rerun_commands(view),
        "fmt": _fmt,
        "duration": _duration,
        "poll_s": POLL_SECONDS,
    }


def dashboard_app(boards: Sequence[CampaignBoard], *, token: str | None = None) -> Starlette:
    """The dashboard's ASGI application for ``boards`` (behind `TokenGate` with ``token``).

    Routes: ``/`` (the campaigns), ``/c/<name>`` (a campaign's page), ``/c/<name>/live`` (the
    fragment the page polls), ``/c/<name>/groups`` (counts per stage x filter x tract),
    ``/c/<name>/status.json`` (the counts, as ``dcflow status --json``'s rows) and ``/static``.
    """
    by_name: Mapping[str, CampaignBoard] = {b.name: b for b in boards}
    if len(by_name) != len(boards):
        raise ConfigInvalidError("two campaigns to serve share a name: serve them separately")
    templates = Jinja2Templates(directory=str(_HERE / "templates"))

    def board_of(request: Request) -> CampaignBoard | None:
        return by_name.get(request.path_params["name"])

    def index(request: Request) -> Response:
        if len(by_name) == 1:
            return campaign_page(request, next(iter(by_name.values())))
        views = []
        for board in by_name.values():
            board.refresh()
            view = board.view()
            views.append((view, view.stage_totals()))
        return templates.TemplateResponse(
            request, "index.html", {"views": views, "poll_s": POLL_SECONDS}
        )

    def campaign_page(request: Request, board: CampaignBoard | None = None) -> Response:
        board = board or board_of(request)
        if board is None:
            return PlainTextResponse("no such campaign", status_code=404)
        return templates.TemplateResponse(request, "campaign.html", _context(board))

    def live(request: Request) -> Response:
        board = board_of(request)
        if board is None:
            return PlainTextResponse("no such campaign", status_code=404)
        return templates.TemplateResponse(request, "live.html", _context(board))

    def groups(request: Request) -> Response:
        board = board_of(request)
        if board is None:
            return PlainTextResponse("no such campaign", status_code=404)
        return templates.TemplateResponse(request, "groups.html", _context(board))

    def status_json(request: Request) -> Response:
        board = board_of(request)
        if board is None:
            return JSONResponse({"error": "no such campaign"}, status_code=404)
        board.refresh()
        view = board.view()
        return JSONResponse(
            {
                "rows": [asdict(r) for r in view.rows],
                "n_failed": view.n_failed,
                "last_attempt_id": view.last_attempt_id,
            }
        )

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/c/{name}", campaign_page),
            Route("/c/{name}/live", live),
            Route("/c/{name}/groups", groups),
            Route("/c/{name}/status.json", status_json),
            Mount("/static", app=StaticFiles(directory=str(_HERE / "static")), name="static"),
        ]
    )
    if token is not None:
        return TokenGate(app, token)
    return app
