"""The plan's pictures: the rule graph and the sky (focal plane per visit) by state."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from dcflow.campaign.snapshots import PlanSnapshot
from dcflow.configs import from_mapping
from dcflow.ledger import tile_of
from dcflow.orchestration.campaign_files import campaign_ledger_path, open_campaign, open_ledger
from dcflow.orchestration.plan_status import plan_campaign
from dcflow.pipeline.graph import JobGraph
from dcflow.status import campaign_status, failed_tiles

__all__ = ["campaign_pictures"]


def _ccd_offsets_deg(config: dict, ccds: list[int]) -> dict[int, tuple[float, float, float, float]]:
    """Per CCD: centre offset (xi, eta) from the pointing and size (w, h), deg."""
    if config["campaign"]["instrument"] == "cfht_sim":
        from dcflow.instruments.cfht_sim import SimConfig, ccd_origin_pix

        sim = from_mapping(SimConfig, config.get("simulation", {}))
        scale = sim.pixel_scale_arcsec / 3600.0
        out = {}
        for ccd in ccds:
            u0, v0 = ccd_origin_pix(sim, ccd)
            u_c, v_c = u0 + sim.ccd_nx / 2.0, v0 + sim.ccd_ny / 2.0
            out[ccd] = (-u_c * scale, v_c * scale, sim.ccd_nx * scale, sim.ccd_ny * scale)
        return out
    side = max(1, int(np.ceil(np.sqrt(len(ccds)))))
    size = 0.2  # deg: a nominal CCD for instruments without a focal-plane model here
    return {
        ccd: ((i % side - (side - 1) / 2) * size, (i // side - (side - 1) / 2) * size, size, size)
        for i, ccd in enumerate(ccds)
    }


def campaign_pictures(
    config_path: str | Path,
    out_dir: str | Path,
    *,
    profile: str | None = "local",
    workdir: str | Path | None = None,
) -> tuple[str, str]:
    """Write the rule graph and the sky picture (visits/CCDs) coloured by state, as PNG.

    Returns the two paths (``rule_graph.png``, ``sky.png`` in ``out_dir``).
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    from dcflow.plots_campaign import (  # matplotlib: imported only when drawing
        CcdTile,
        rule_graph_figure,
        save_png,
        sky_figure,
    )

    config, layout, index = open_campaign(config_path, workdir)
    graph = JobGraph(index)
    jobs = graph.job_specs()
    records = graph.registry.records(obstype="object")
    ccds = [int(c) for c in index.ccds]
    scanned_at = time.time()
    plan = plan_campaign(config_path, profile=profile, workdir=workdir)
    failed: set[tuple[str, str]] = set()
    running: set[tuple[str, str]] = set()
    ledger_file = campaign_ledger_path(layout, workdir)
    if ledger_file.exists():
        with open_ledger(ledger_file) as ledger:
            status = campaign_status(graph, PlanSnapshot(plan.need or {}, scanned_at), ledger)
            failed = {
                (f.rule, f.data_id)
                for f in failed_tiles(
                    ledger, on_disk=lambda path: os.path.exists(workdir / path), n_lines=0
                )
            }
            running = {(str(a.rule), str(a.data_id)) for a in status.running}
    out = Path(out_dir)
    graph = save_png(
        rule_graph_figure(
            jobs, plan.to_run, failed=failed, running=running, title=config["campaign"]["name"]
        ),
        out / "rule_graph.png",
    )
    visit_state: dict[int, str] = {}
    for job in jobs:
        visit = job.data_id.get("visit")
        if visit is None:
            continue
        key = (job.rule, tile_of(job.data_id))
        state = (
            "failed"
            if key in failed
            else "running"
            if key in running
            else "to run"
            if key in plan.to_run
            else "done"
        )
        order = ("done", "to run", "running", "failed")
        old = visit_state.get(int(visit), "done")
        visit_state[int(visit)] = max(old, state, key=order.index)
    offsets = _ccd_offsets_deg(config, ccds)
    tiles = []
    for record in records:
        if record.ra_deg is None or record.dec_deg is None or record.ccd not in offsets:
            continue
        xi, eta, width, height = offsets[record.ccd]
        cos_dec = max(np.cos(np.radians(record.dec_deg)), 0.1)
        tiles.append(
            CcdTile(
                visit=record.visit,
                ccd=record.ccd,
                band=record.filter,
                ra_deg=record.ra_deg + xi / cos_dec,
                dec_deg=record.dec_deg + eta,
                width_deg=width / cos_dec,
                height_deg=height,
                state=visit_state.get(record.visit, "to run"),
            )
        )
    sky = save_png(sky_figure(tiles, title=config["campaign"]["name"]), out / "sky.png")
    return graph, sky
