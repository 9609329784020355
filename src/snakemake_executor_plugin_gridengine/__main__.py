"""``python -m snakemake_executor_plugin_gridengine [WORKDIR]``: recover after a killed driver."""

from .reattach import main

raise SystemExit(main())
