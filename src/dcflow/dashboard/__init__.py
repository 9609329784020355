"""The live web dashboard of campaigns (`dcflow serve`): the board and the web application.

`dcflow.dashboard.board` follows a campaign's ledger; `dcflow.dashboard.app` renders it.
`dcflow.orchestration.serve` opens campaigns and runs the server.
"""
