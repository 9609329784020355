"""`dcflow serve`: open campaigns as dashboard boards and serve them over HTTP (uvicorn)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dcflow.dashboard.board import CampaignBoard
from dcflow.errors import CampaignError, ConfigInvalidError
from dcflow.orchestration.campaign_files import campaign_ledger_path
from dcflow.orchestration.plan_status import current_need

__all__ = ["open_board", "serve_campaigns"]

logger = logging.getLogger(__name__)


def open_board(
    config_path: str | os.PathLike, *, workdir: str | os.PathLike | None = None
) -> CampaignBoard:
    """The board of the campaign of ``config_path`` (working directory: the config's).

    The needrun arrays are `dcflow.orchestration.plan_status.current_need`'s: a small
    campaign is planned afresh, a large one starts from its last plan's snapshot.
    """
    workdir = Path(workdir or Path(config_path).parent).resolve()
    config, graph, snapshot = current_need(config_path, workdir)
    name = str(config.get("campaign", {}).get("name") or Path(config_path).parent.name)
    ledger_path = campaign_ledger_path(graph.index.layout, workdir)
    board = CampaignBoard(name, config_path, graph, snapshot, ledger_path, workdir)
    board.refresh()
    return board


def serve_campaigns(
    path: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8050,
    token_file: str | os.PathLike | None = None,
) -> None:
    """Serve the dashboard of the campaign(s) at ``path`` until interrupted.

    Parameters
    ----------
    path : path-like
        A campaign config, a campaign directory, or a directory of campaigns.
    host, port : str, int
        Where to listen. Any address other than loopback needs a token.
    token_file : path-like, optional
        File whose first line is the access token (else ``DCFLOW_SERVE_TOKEN``).

    Raises
    ------
    ConfigInvalidError
        A non-loopback ``host`` without a token.
    ConfigMissingError
        Nothing to serve at ``path``.
    CampaignError
        The web packages (the ``dashboard`` extra) are not installed.
    """
    try:
        import uvicorn

        from dcflow.dashboard.app import (
            TOKEN_ENV,
            dashboard_app,
            find_campaigns,
            is_loopback,
            read_token,
        )
    except ImportError as exc:
        raise CampaignError(
            f"the dashboard needs the web packages ({exc.name} is missing):"
            " pip install -e '.[dashboard]'"
        ) from exc

    token = read_token(token_file)
    if not is_loopback(host) and token is None:
        raise ConfigInvalidError(
            f"--host {host} is not loopback: give a token (--token-file or {TOKEN_ENV})"
        )
    boards = []
    for config in find_campaigns(path):
        logger.info("reading campaign %s", config)
        boards.append(open_board(config))
    app = dashboard_app(boards, token=token)
    shown = "localhost" if is_loopback(host) else host
    print(f"dcflow serve: http://{shown}:{port}/ ({len(boards)} campaign(s)); Ctrl-C stops it")
    # no access log: a request line may carry the token (?token=...)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
