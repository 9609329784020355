"""The plan's pictures: the rule graph and the sky (focal plane per visit) by state."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dcflow.configs import from_mapping
from dcflow.orchestration.campaign_files import campaign_ledger_path, open_ledger
from dcflow.orchestration.plan_status import current_need
from dcflow.pipeline.graph import JobGraph
from dcflow.pipeline.spec import TARGET_RULE
from dcflow.status import job_states

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
    workdir: str | Path | None = None,
) -> tuple[str, str]:
    """Write the rule graph and the sky picture (visits/CCDs) coloured by state, as PNG.

    Returns the two paths (``rule_graph.png``, ``sky.png`` in ``out_dir``).
    """
    workdir = Path(workdir or os.getcwd()).resolve()
    from dcflow.plots_campaign import (  # matplotlib: imported only when drawing
        RuleCounts,
        rule_graph_figure,
        save_png,
        sky_figure,
    )

    config, graph, snapshot = current_need(config_path, workdir)
    ledger_file = campaign_ledger_path(graph.index.layout, workdir)
    if ledger_file.exists():
        with open_ledger(ledger_file) as ledger:
            ledger.reap_dead_runs()
            live = [r.run_id for r in ledger.runs() if r.finished is None]
            states = job_states(graph, snapshot, ledger, live)
    else:
        states = {
            rule: {"to_run": np.asarray(need, dtype=bool)} for rule, need in snapshot.need.items()
        }
    counts = {
        rule: RuleCounts(
            total=int(masks["to_run"].size),
            **{k: int(v.sum()) for k, v in masks.items() if k in ("to_run", "failed", "running")},
        )
        for rule, masks in states.items()
    }
    left = any(c.to_run for c in counts.values())
    counts[TARGET_RULE] = RuleCounts(total=1, to_run=int(left))
    edges = {(p.rule, s.rule) for s in graph.stages for _, p in graph.upstream_inputs(s)}
    edges |= {(s.rule, TARGET_RULE) for s in graph.stages if any(o.target for o in s.outputs)}
    out = Path(out_dir)
    rule_graph = save_png(
        rule_graph_figure(counts, edges, title=config["campaign"]["name"]),
        out / "rule_graph.png",
    )
    tiles = _sky_tiles(config, graph, states)
    sky = save_png(
        sky_figure(tiles, outlines=_sky_outlines(graph), title=config["campaign"]["name"]),
        out / "sky.png",
    )
    return rule_graph, sky


MAX_PATCH_OUTLINES = 2_000
"""Above this many patches the sky shows tract outlines only."""


def _sky_outlines(graph: JobGraph) -> list:
    """`SkyOutline`s of the sky map: each tract's pixel box and its patches' inner boxes."""
    from dcflow.campaign.skymap import patch_info, tract_wcs
    from dcflow.plots_campaign import SkyOutline

    tracts = graph.index.tracts
    with_patches = sum(t.n_patches**2 for t in tracts) <= MAX_PATCH_OUTLINES
    outlines = []
    for tract in tracts:
        wcs = tract_wcs(tract)

        def corners(box, kind: str, label: str, wcs=wcs) -> SkyOutline:
            x = np.array([box.x0, box.x1, box.x1, box.x0], dtype=float) - 0.5
            y = np.array([box.y0, box.y0, box.y1, box.y1], dtype=float) - 0.5
            ra, dec = wcs.pixel_to_world_values(x, y)
            return SkyOutline(kind, label, tuple(map(float, ra)), tuple(map(float, dec)))

        outlines.append(corners(tract.bbox, "tract", f"tract {tract.tract_id}"))
        if with_patches:
            for px in range(tract.n_patches):
                for py in range(tract.n_patches):
                    patch = patch_info(tract, px, py)
                    outlines.append(corners(patch.inner, "patch", patch.name))
    return outlines


_STATE_ORDER = ("done", "to run", "running", "failed")
"""A visit takes the worst state of its jobs, in this order."""

MAX_CCD_TILES = 100_000
"""Above this many visit x CCD boxes the sky shows one box per visit (its focal plane)."""


def _sky_tiles(config: dict, graph: JobGraph, states: dict[str, dict[str, np.ndarray]]) -> list:
    """`CcdTile` boxes per visit and CCD (per visit at scale), by the worst state of its jobs."""
    from dcflow.plots_campaign import CcdTile

    index = graph.index
    code = np.zeros(index.n_visits, dtype=np.int8)
    for rule, masks in states.items():
        visit = graph.jobs(rule).columns.get("visit")
        if visit is None:
            continue
        job_code = masks["to_run"].astype(np.int8)
        for level, name in ((2, "running"), (3, "failed")):
            if name in masks:
                job_code = np.where(masks[name], np.int8(level), job_code)
        np.maximum.at(code, visit, job_code)
    ccds = [int(c) for c in index.ccds]
    offsets = _ccd_offsets_deg(config, ccds)
    if index.n_visits * len(ccds) > MAX_CCD_TILES:
        xi = [o[0] for o in offsets.values()]
        eta = [o[1] for o in offsets.values()]
        span = max(max(xi) - min(xi) + max(o[2] for o in offsets.values()), 0.01)
        height = max(max(eta) - min(eta) + max(o[3] for o in offsets.values()), 0.01)
        offsets = {-1: ((max(xi) + min(xi)) / 2, (max(eta) + min(eta)) / 2, span, height)}
    tiles = []
    known = np.flatnonzero(np.isfinite(index.visit_ra_deg) & np.isfinite(index.visit_dec_deg))
    for v in known.tolist():
        ra, dec = float(index.visit_ra_deg[v]), float(index.visit_dec_deg[v])
        cos_dec = max(np.cos(np.radians(dec)), 0.1)
        for ccd, (xi, eta, width, height) in offsets.items():
            tiles.append(
                CcdTile(
                    visit=int(index.visits[v]),
                    ccd=ccd,
                    band=index.filters[int(index.visit_band[v])],
                    ra_deg=ra + xi / cos_dec,
                    dec_deg=dec + eta,
                    width_deg=width / cos_dec,
                    height_deg=height,
                    state=_STATE_ORDER[int(code[v])],
                )
            )
    return tiles
