"""``dcflow serve``: a live web dashboard of campaigns, read from their run ledgers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dcflow.errors import ConfigInvalidError

__all__ = ["serve"]

logger = logging.getLogger(__name__)


def serve(
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
    """
    import uvicorn

    from dcflow.dashboard.app import (
        TOKEN_ENV,
        dashboard_app,
        find_campaigns,
        is_loopback,
        read_token,
    )
    from dcflow.dashboard.board import CampaignBoard

    token = read_token(token_file)
    if not is_loopback(host) and token is None:
        raise ConfigInvalidError(
            f"--host {host} is not loopback: give a token (--token-file or {TOKEN_ENV})"
        )
    boards = []
    for config in find_campaigns(path):
        logger.info("reading campaign %s", config)
        boards.append(CampaignBoard.open(config, workdir=Path(config).parent))
    app = dashboard_app(boards, token=token)
    shown = "localhost" if is_loopback(host) else host
    print(f"dcflow serve: http://{shown}:{port}/ ({len(boards)} campaign(s)); Ctrl-C stops it")
    # no access log: a request line may carry the token (?token=...)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
