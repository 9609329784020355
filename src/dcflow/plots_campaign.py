"""Campaign pictures for ``dcflow plan``: the rule graph and the sky, coloured by state.

Both are drawn with matplotlib's Agg backend from the planner's job graph (no Graphviz, no
Snakemake DAG), so they cost the same as the plan.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from astropy.nddata import block_reduce
from astropy.visualization import ZScaleInterval

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch, Patch, Polygon, Rectangle
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from dcflow.io import atomic_path
from dcflow.jobspec import JobSpec
from dcflow.ledger import tile_of

__all__ = [
    "STATE_COLOURS",
    "CcdTile",
    "RuleCounts",
    "SkyOutline",
    "rule_counts",
    "rule_edges",
    "rule_graph_figure",
    "save_png",
    "sky_figure",
    "thumbnail_figure",
]

STATE_COLOURS: dict[str, str] = {
    "done": "#2ca02c",
    "to run": "#c7c7c7",
    "running": "#1f77b4",
    "failed": "#d62728",
    "partly done": "#ff7f0e",
}
"""Colour of each tile state in both pictures."""


@dataclass(frozen=True, slots=True)
class RuleCounts:
    """Jobs of one rule: all of them, those still to run, and of those the failed and running."""

    total: int
    to_run: int
    failed: int = 0
    running: int = 0


def rule_counts(
    jobs: Sequence[JobSpec],
    to_run: Mapping[tuple[str, str], object] | set[tuple[str, str]],
    *,
    failed: set[tuple[str, str]] = frozenset(),
    running: set[tuple[str, str]] = frozenset(),
) -> dict[str, RuleCounts]:
    """`RuleCounts` per rule of a job list (small campaigns: one object per job)."""
    tallies: dict[str, list[int]] = {}
    for job in jobs:
        key = (job.rule, tile_of(job.data_id))
        tally = tallies.setdefault(job.rule, [0, 0, 0, 0])
        tally[0] += 1
        tally[1] += key in to_run
        tally[2] += key in failed
        tally[3] += key in running
    return {rule: RuleCounts(*tally) for rule, tally in tallies.items()}


def rule_edges(jobs: Sequence[JobSpec]) -> set[tuple[str, str]]:
    """``(upstream rule, downstream rule)`` pairs: a job of the second reads the first's."""
    producer: dict[str, str] = {}
    for job in jobs:
        for path in job.outputs:
            producer[os.path.normpath(path)] = job.rule
    edges = set()
    for job in jobs:
        for path in job.inputs:
            source = producer.get(os.path.normpath(path))
            if source is not None and source != job.rule:
                edges.add((source, job.rule))
    return edges


def _levels(rules: Sequence[str], edges: set[tuple[str, str]]) -> dict[str, int]:
    level = dict.fromkeys(rules, 0)
    for _ in rules:  # longest-path layering; the graph is a DAG with few rules
        for up, down in edges:
            level[down] = max(level[down], level[up] + 1)
    return level


def rule_graph_figure(
    counts: Mapping[str, RuleCounts],
    edges: set[tuple[str, str]],
    *,
    title: str = "rule graph",
) -> Figure:
    """The rule graph, one box per rule with its done / total job counts, coloured by state.

    A rule is green when all its jobs are done, grey when none is, orange in between, red
    if one of its tiles failed, blue if one is running. ``counts`` come from arrays at any
    scale (`dcflow.status.job_states`) or from a job list (`rule_counts`).
    """
    rules = list(counts)
    totals = {r: c.total for r, c in counts.items()}
    left = {r: c.to_run for r, c in counts.items()}
    n_failed = {r: c.failed for r, c in counts.items()}
    n_running = {r: c.running for r, c in counts.items()}
    level = _levels(rules, edges)
    by_level: dict[int, list[str]] = {}
    for rule in rules:
        by_level.setdefault(level[rule], []).append(rule)
    depth = max(by_level) + 1
    width = max(len(v) for v in by_level.values())
    fig, ax = plt.subplots(figsize=(max(6.0, 3.0 * width), max(4.0, 1.6 * depth)), dpi=100)
    pos: dict[str, tuple[float, float]] = {}
    for lvl, names in by_level.items():
        for i, rule in enumerate(names):
            pos[rule] = ((i + 0.5) * width / len(names), depth - lvl - 0.5)
    for up, down in sorted(edges):
        (x0, y0), (x1, y1) = pos[up], pos[down]
        skip = level[down] - level[up] > 1  # bend edges that jump over a level around it
        ax.annotate(
            "",
            xy=(x1 + (0.42 if skip else 0.0), y1 + (0.0 if skip else 0.22)),
            xytext=(x0 + (0.42 if skip else 0.0), y0 - (0.0 if skip else 0.22)),
            arrowprops={
                "arrowstyle": "->",
                "color": "#555555",
                "lw": 1.5,
                "connectionstyle": "arc3,rad=-0.4" if skip else "arc3",
            },
        )
    for rule, (x, y) in pos.items():
        done = totals[rule] - left[rule]
        if n_failed[rule]:
            state = "failed"
        elif n_running[rule]:
            state = "running"
        elif left[rule] == 0:
            state = "done"
        elif done == 0:
            state = "to run"
        else:
            state = "partly done"
        box = FancyBboxPatch(
            (x - 0.42, y - 0.2),
            0.84,
            0.4,
            boxstyle="round,pad=0.02",
            facecolor=STATE_COLOURS[state],
            edgecolor="black",
        )
        ax.add_patch(box)
        extra = f", {n_failed[rule]} failed" if n_failed[rule] else ""
        ax.text(
            x, y, f"{rule}\n{done}/{totals[rule]} done{extra}", ha="center", va="center", fontsize=9
        )
    ax.set_xlim(-0.7, width + 0.1)  # room for the legend on the left
    ax.set_ylim(-0.1, depth + 0.1)
    ax.set_axis_off()
    ax.set_title(title)
    ax.legend(
        handles=[Patch(facecolor=c, edgecolor="black", label=s) for s, c in STATE_COLOURS.items()],
        loc="lower left",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


@dataclass(frozen=True, slots=True)
class CcdTile:
    """One visit/CCD on the sky: its corners (deg) and state (a `STATE_COLOURS` key)."""

    visit: int
    ccd: int
    band: str
    ra_deg: float
    dec_deg: float
    width_deg: float
    height_deg: float
    state: str


@dataclass(frozen=True, slots=True)
class SkyOutline:
    """A sky-map cell drawn as an outline: a tract or a patch (inner box), corners in deg."""

    kind: str
    label: str
    ra_deg: tuple[float, ...]
    dec_deg: tuple[float, ...]


def sky_figure(
    tiles: Sequence[CcdTile],
    *,
    outlines: Sequence[SkyOutline] = (),
    title: str = "visits / CCDs",
) -> Figure:
    """Every visit's CCDs as boxes on the sky, coloured by the state of their jobs.

    One panel per band (visits of one band overlap); RA increases to the left. Tract
    outlines are solid, patch outlines dotted with their names; the legend sits below the
    panels, outside the data, and each panel's title counts its visit x CCD boxes by state.
    """
    bands = sorted({t.band for t in tiles}) or ["-"]
    fig, axes = plt.subplots(
        1,
        len(bands),
        figsize=(5.0 * len(bands) + 1.2, 5.6),
        dpi=100,
        squeeze=False,
        layout="constrained",
    )
    for ax, band in zip(axes[0], bands, strict=True):
        mine = [t for t in tiles if t.band == band]
        for tile in mine:
            ax.add_patch(
                Rectangle(
                    (tile.ra_deg - tile.width_deg / 2, tile.dec_deg - tile.height_deg / 2),
                    tile.width_deg,
                    tile.height_deg,
                    facecolor=STATE_COLOURS[tile.state],
                    edgecolor="black",
                    alpha=0.55,
                    lw=0.6,
                )
            )
        ras = [t.ra_deg for t in mine]
        decs = [t.dec_deg for t in mine]
        for outline in outlines:
            patch = outline.kind == "patch"
            ax.add_patch(
                Polygon(
                    list(zip(outline.ra_deg, outline.dec_deg, strict=True)),
                    closed=True,
                    fill=False,
                    edgecolor="#333333" if patch else "black",
                    ls=":" if patch else "-",
                    lw=0.8 if patch else 1.6,
                )
            )
            # labels at the outline's top-left corner, above the CCD boxes
            ax.text(
                max(outline.ra_deg),
                max(outline.dec_deg),
                outline.label,
                ha="left",
                va="bottom" if not patch else "top",
                fontsize=7 if patch else 9,
                color="#333333",
                zorder=5,
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1} if patch else None,
            )
            ras += list(outline.ra_deg)
            decs += list(outline.dec_deg)
        if ras:
            pad = max([t.width_deg for t in mine] + [t.height_deg for t in mine] + [0.0]) / 2
            pad = max(pad, 0.02 * (max(ras) - min(ras) + max(decs) - min(decs)), 1e-3)
            ax.set_xlim(max(ras) + pad, min(ras) - pad)
            ax.set_ylim(min(decs) - pad, max(decs) + pad)
            ax.set_aspect(1.0 / max(math.cos(math.radians(sum(decs) / len(decs))), 0.1))
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.2f"))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
        ax.set_xlabel("RA (deg)")
        ax.set_ylabel("Dec (deg)")
        states = [s for s in STATE_COLOURS if any(t.state == s for t in mine)]
        counts = ", ".join(f"{sum(t.state == s for t in mine)} {s}" for s in states)
        ax.set_title(f"band {band}: {len(mine)} visit x CCD boxes ({counts})", fontsize=9)
    handles = [
        Patch(facecolor=c, edgecolor="black", label=s)
        for s, c in STATE_COLOURS.items()
        if s != "partly done"
    ]
    if outlines:
        handles += [
            Line2D([], [], color="black", lw=1.6, label="tract"),
            Line2D([], [], color="#333333", ls=":", lw=0.8, label="patch"),
        ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle(title)
    return fig


def thumbnail_figure(image: np.ndarray, *, title: str, max_pixels: int = 256) -> Figure:
    """A small picture of an image array ``(ny, nx)``: block-averaged, zscale grey levels.

    NaN (no data) pixels are shown white; the title names the data and its size.
    """
    factor = max(1, math.ceil(max(image.shape) / max_pixels))
    small = np.asarray(image, dtype=float)
    if factor > 1:
        with warnings.catch_warnings():
            # a block wholly outside the data (all NaN) stays NaN: the warning says just that
            warnings.simplefilter("ignore", RuntimeWarning)
            small = block_reduce(small, factor, func=np.nanmean)
    finite = np.isfinite(small)
    vmin, vmax = ZScaleInterval().get_limits(small[finite]) if finite.any() else (0.0, 1.0)
    fig, ax = plt.subplots(figsize=(2.6, 2.9), dpi=100, layout="constrained")
    ax.imshow(small, origin="lower", cmap="gray_r", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{title}\n{image.shape[1]} x {image.shape[0]} px", fontsize=7)
    return fig


def save_png(fig: Figure, path: str | os.PathLike) -> str:
    """Write a figure as PNG atomically (`dcflow.io.atomic_path`) and close it."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return os.fspath(path)
