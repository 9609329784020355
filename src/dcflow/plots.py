"""Pictures of stage results, as matplotlib Figures that the scripts save.

Figures are drawn with the non-interactive Agg canvas (no display needed on batch nodes) and
returned to the caller, which writes them atomically with `dcflow.io.atomic_path` and closes
them.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dcflow.stages.fe55 import KALPHA_ELECTRONS, Fe55AmpResult, Fe55Result, line_model

__all__ = ["draw_fe55_amp", "fe55_amp_figure", "fe55_exposure_figure"]


def draw_fe55_amp(ax: Axes, amp: Fe55AmpResult) -> None:
    """Draw one amplifier's event-signal histogram, the fitted lines and the gain on ``ax``.

    The histogram covers 0.5 to 1.5 times the K-alpha peak with the fit's bin width; the
    fitted model (K-alpha + K-beta + background) is drawn over the fit window, the K-alpha
    peak is marked, and the gain, its error, the peak width and the event count are written
    in the panel.
    """
    fit = amp.fit
    width = float(np.diff(fit.edges_adu[:2])[0])
    low = max(0.5 * fit.peak_adu, 0.0)
    high = 1.5 * fit.peak_adu
    n_bins = max(int((high - low) / width), 10)
    edges = np.linspace(low, high, n_bins + 1)
    counts, _ = np.histogram(amp.events.signal_adu, bins=edges)
    ax.stairs(counts, edges, color="0.3", label=f"isolated events ({amp.events.signal_adu.size})")
    params = np.array(
        [fit.n_kalpha, fit.peak_adu, fit.sigma_adu, fit.kbeta_ratio, fit.background_per_adu]
    )
    fine = np.linspace(fit.edges_adu[0], fit.edges_adu[-1], 400)
    model = line_model(fine, params) / np.diff(fine) * (edges[1] - edges[0])
    centres = 0.5 * (fine[1:] + fine[:-1])
    ax.plot(centres, model, color="tab:red", lw=1.5, label="K$\\alpha$ + K$\\beta$ fit")
    ax.axvline(fit.peak_adu, color="tab:blue", ls="--", lw=1, label="K$\\alpha$ peak")
    text = (
        f"amp {amp.amp}\n"
        f"peak {fit.peak_adu:.1f} ADU\n"
        f"gain {amp.gain_e_per_adu:.4f} $\\pm$ {amp.gain_err_e_per_adu:.4f} e$^-$/ADU\n"
        f"width {amp.peak_sigma_e:.1f} e$^-$ rms\n"
        f"events in fit {fit.n_in_window}"
    )
    ax.text(
        0.02,
        0.97,
        text,
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=8,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"},
    )
    ax.set_xlabel(f"event signal (ADU); gain = {KALPHA_ELECTRONS:.0f} e$^-$ / peak")
    ax.set_ylabel(f"events per {edges[1] - edges[0]:.1f} ADU")
    ax.set_xlim(low, high)
    ax.legend(loc="upper right", fontsize=7)


def fe55_amp_figure(amp: Fe55AmpResult, *, title: str = "") -> Figure:
    """One amplifier's Fe55 histogram picture (see `draw_fe55_amp`)."""
    figure = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    draw_fe55_amp(ax, amp)
    if title:
        ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def fe55_exposure_figure(result: Fe55Result, *, title: str = "") -> Figure:
    """A picture per amplifier of one Fe55 exposure, as panels of one figure.

    Raises
    ------
    ValueError
        If ``result`` holds no amplifier.
    """
    n = len(result.amps)
    if n == 0:
        raise ValueError("result holds no amplifier to draw")
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    figure = Figure(figsize=(6.0 * cols, 3.8 * rows))
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax, amp in zip(axes.flat, result.amps, strict=False):
        draw_fe55_amp(ax, amp)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
