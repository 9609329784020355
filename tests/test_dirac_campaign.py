"""Part of a small simulated campaign (one visit's catalogs: master bias, flat, calexp and src)
through profiles/dirac gives byte-identical products to the local run. The whole campaign takes
minutes more on the 2-core CI machine (the Grid Engine campaign test runs it whole)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from campaigns import write_campaign_config
from test_dirac_workflows import WHY

from dcflow.config_schema import load_config
from dcflow.layout import Layout
from dcflow.orchestration.prepare import ingest_campaign, simulate_campaign
from dcflow.orchestration.snakemake_cli import run_snakemake

pytestmark = [
    pytest.mark.dirac,
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(WHY is not None, reason=WHY or ""),
]


def _hdus(path: Path) -> list[tuple[str, bytes]]:
    """Name and data bytes of every HDU with data."""
    with fits.open(path) as hdus:
        return [(h.name, np.asarray(h.data).tobytes()) for h in hdus if h.data is not None]


def test_campaign_catalogs_through_profiles_dirac_match_the_local_run(tmp_path):
    from snakemake_executor_plugin_dirac.submit import job_group
    from snakemake_executor_plugin_dirac.wms import DiracWMS

    products = {}
    for profile in ("local", "dirac"):
        root = tmp_path / profile
        root.mkdir()
        config = write_campaign_config(root, visits_per_filter=1, n_ccds=1)
        simulate_campaign(config)
        ingest_campaign(config)
        layout = Layout.from_config(load_config(config))
        targets = [layout.path(kind, visit=1001, ccd=0) for kind in ("calexp", "src")]
        args = [*targets, "--quiet", "rules"]
        if profile == "dirac":
            args += ["--seconds-between-status-checks", "2"]
        code = run_snakemake(config, profile=profile, snakemake_args=args, workdir=root)
        assert code == 0, f"{profile} run failed"
        paths = [layout.path("bias", ccd=0), layout.path("flat", filter="g", ccd=0), *targets]
        products[profile] = [_hdus(Path(p)) for p in paths]

    # Every job of the DIRAC run went through the WMS (its JobGroup) and ended Done:
    # the master bias, the g flat, then visit 1001's processCcd.
    wms = DiracWMS()
    ids = wms.group_job_ids(job_group(tmp_path / "dirac", "dcflow"))
    assert len(ids) == 3
    assert {o.status for o in wms.states(ids).values()} == {"Done"}
    assert all(hdus for hdus in products["local"])
    assert products["dirac"] == products["local"]
