"""Pictures of stage results, as matplotlib Figures that the scripts save.

Figures are drawn with the non-interactive Agg canvas (no display needed on batch nodes) and
returned to the caller, which writes them atomically with `dcflow.io.atomic_path` and closes
them.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
from astropy.table import Table
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dcflow.exposure import MaskPlane
from dcflow.stages.fe55 import Fe55AmpResult, Fe55Result, line_model
from dcflow.stages.photon_transfer import PhotonTransferResult

__all__ = [
    "diffim_figure",
    "draw_fe55_amp",
    "fe55_amp_figure",
    "fe55_exposure_figure",
    "fe55_summary_figure",
    "ptc_figure",
]


def draw_fe55_amp(ax: Axes, amp: Fe55AmpResult) -> None:
    """Draw one amplifier's event-signal histogram, the fitted lines and the gain on ``ax``.

    The histogram covers 0.5 to 1.5 times the K-alpha peak with the fit's bin width; the
    fitted model (K-alpha + K-beta, their partial-charge shelf and a floor) is drawn over the
    fit window, the K-alpha peak is marked, and the gain, its error, the peak width against
    its expectation, the event count and the verdict are written in the panel (an untrusted
    amplifier's panel is framed in red with ``UNTRUSTED`` and its reasons).
    """
    fit = amp.fit
    if fit is None:
        _draw_unfitted_amp(ax, amp)
        return
    width = float(np.diff(fit.edges_adu[:2])[0])
    low = max(0.5 * fit.peak_adu, 0.0)
    high = 1.5 * fit.peak_adu
    n_bins = max(int((high - low) / width), 10)
    edges = np.linspace(low, high, n_bins + 1)
    counts, _ = np.histogram(amp.events.signal_adu, bins=edges)
    ax.stairs(counts, edges, color="0.3", label=f"graded events ({amp.events.signal_adu.size})")
    params = fit.params()
    fine = np.linspace(fit.edges_adu[0], fit.edges_adu[-1], 400)
    model = line_model(fine, params) / np.diff(fine) * (edges[1] - edges[0])
    centres = 0.5 * (fine[1:] + fine[:-1])
    ax.plot(centres, model, color="tab:red", lw=1.5, label="K$\\alpha$ + K$\\beta$ fit")
    ax.axvline(fit.peak_adu, color="tab:blue", ls="--", lw=1, label="K$\\alpha$ peak")
    text = (
        f"amp {amp.amp}\n"
        f"peak {fit.peak_adu:.1f} ADU\n"
        f"gain {amp.gain_e_per_adu:.4f} $\\pm$ {amp.gain_err_e_per_adu:.4f} e$^-$/ADU\n"
        f"width {amp.peak_sigma_e:.1f} e$^-$ rms ({amp.width_ratio:.2f} x expected)\n"
        f"events in fit {fit.n_in_window}, K$\\alpha$ {fit.n_kalpha:.0f}\n"
        + ("trusted" if amp.trusted else f"UNTRUSTED: {amp.verdict}")
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
    if not amp.trusted:
        for spine in ax.spines.values():
            spine.set_color("tab:red")
            spine.set_linewidth(2)
    ax.set_xlabel(f"event signal (ADU); gain = {amp.kalpha_yield_e:.1f} e$^-$ / peak")
    ax.set_ylabel(f"events per {edges[1] - edges[0]:.1f} ADU")
    ax.set_xlim(low, high)
    ax.legend(loc="upper right", fontsize=7)


def _draw_unfitted_amp(ax: Axes, amp: Fe55AmpResult) -> None:
    """An amplifier whose peak fit failed: its event signals and the reason, framed in red."""
    signal = amp.events.signal_adu
    if signal.size:
        ax.hist(
            signal, bins=50, histtype="step", color="0.3", label=f"graded events ({signal.size})"
        )
        ax.legend(loc="upper right", fontsize=7)
    ax.text(
        0.02,
        0.97,
        f"amp {amp.amp}\nUNTRUSTED: {amp.verdict}",
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=8,
        wrap=True,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"},
    )
    for spine in ax.spines.values():
        spine.set_color("tab:red")
        spine.set_linewidth(2)
    ax.set_xlabel("event signal (ADU)")


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


def _amp_panels(n: int, panel_size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure of ``n`` amplifier panels, two per row (axes as a 2-d array)."""
    if n == 0:
        raise ValueError("result holds no amplifier to draw")
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    figure = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows))
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, cols, squeeze=False)


def fe55_exposure_figure(result: Fe55Result, *, title: str = "") -> Figure:
    """A picture per amplifier of one Fe55 exposure, as panels of one figure.

    Raises
    ------
    ValueError
        If ``result`` holds no amplifier.
    """
    figure, axes = _amp_panels(len(result.amps), (6.0, 3.8))
    n = len(result.amps)
    for ax, amp in zip(axes.flat, result.amps, strict=False):
        draw_fe55_amp(ax, amp)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


TRUSTED_COLOR = "0.15"
UNTRUSTED_COLOR = "tab:red"


def fe55_summary_figure(
    summary: Table, *, max_ptc_deviation: float = 0.015, title: str = ""
) -> Figure:
    """The combined gain of a sensor's amplifiers, with their verdicts, as one picture.

    Top: per amplifier the combined Fe55 gain with its error and, where the summary has them,
    the photon-transfer gain beside it. Bottom (with photon transfer): Fe55 / photon transfer
    with its error and the band ``1 +- max_ptc_deviation``. A trusted amplifier is drawn as
    filled dark points; an untrusted one hollow in red, its name red and marked on the axis,
    and its reasons listed under the plot, so that no untrusted gain reads as a plain number.

    Parameters
    ----------
    summary : astropy.table.Table
        `dcflow.stages.fe55.summarize_gains` output (columns ``amp``, ``gain_e_per_adu``,
        ``gain_err_e_per_adu``, ``trusted``, ``verdict``; ``ptc_gain_e_per_adu``,
        ``ptc_gain_err_e_per_adu``, ``fe55_over_ptc``, ``fe55_over_ptc_err`` when set against
        photon transfer).
    max_ptc_deviation : float
        Half-width of the trusted band of the ratio (fraction).
    title : str
        Figure title.

    Raises
    ------
    ValueError
        If ``summary`` has no row.
    """
    if len(summary) == 0:
        raise ValueError("summary holds no amplifier to draw")
    amps = [str(a) for a in summary["amp"]]
    trusted = np.asarray(summary["trusted"], dtype=bool)
    x = np.arange(len(amps), dtype=float)
    has_ptc = "fe55_over_ptc" in summary.colnames
    width = max(6.4, 0.55 * len(amps) + 2.5)
    # reasons wrapped to the figure's width (about 16 characters of 7-point text per inch)
    untrusted_lines = [
        line
        for a, v, ok in zip(amps, summary["verdict"], trusted, strict=True)
        if not ok
        for line in textwrap.wrap(
            f"amp {a}: UNTRUSTED: {v}", width=int(16 * width), subsequent_indent="    "
        )
    ]
    height = (5.2 if has_ptc else 3.4) + 0.22 * len(untrusted_lines)
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.subplots(
        2 if has_ptc else 1,
        1,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 2] if has_ptc else [1]},
    )[:, 0]
    offset = 0.12 if has_ptc else 0.0
    _draw_by_trust(
        axes[0],
        x - offset,
        np.asarray(summary["gain_e_per_adu"], float),
        np.asarray(summary["gain_err_e_per_adu"], float),
        trusted,
        marker="o",
        label="Fe55",
    )
    if has_ptc:
        axes[0].errorbar(
            x + offset,
            summary["ptc_gain_e_per_adu"],
            yerr=summary["ptc_gain_err_e_per_adu"],
            fmt="s",
            color="tab:blue",
            mfc="none",
            ms=5,
            capsize=2,
            label="photon transfer",
        )
        ratio_ax = axes[1]
        ratio_ax.axhspan(
            1 - max_ptc_deviation, 1 + max_ptc_deviation, color="tab:green", alpha=0.15, lw=0
        )
        ratio_ax.axhline(1.0, color="0.5", lw=0.8)
        _draw_by_trust(
            ratio_ax,
            x,
            np.asarray(summary["fe55_over_ptc"], float),
            np.asarray(summary["fe55_over_ptc_err"], float),
            trusted,
            marker="o",
            label=None,
        )
        ratio_ax.set_ylabel("Fe55 / PTC")
    axes[0].set_ylabel("gain (e$^-$/ADU)")
    n_untrusted = int(np.sum(~trusted))
    axes[0].set_title(
        (f"{title}: " if title else "")
        + f"{len(amps) - n_untrusted} trusted, {n_untrusted} untrusted",
        fontsize=10,
    )
    axes[0].legend(fontsize=7, loc="best")
    bottom = axes[-1]
    names = [a if ok else f"{a}\nUNTRUSTED" for a, ok in zip(amps, trusted, strict=True)]
    bottom.set_xticks(x, names)
    for label, ok in zip(bottom.get_xticklabels(), trusted, strict=True):
        label.set_color(TRUSTED_COLOR if ok else UNTRUSTED_COLOR)
        label.set_fontweight("normal" if ok else "bold")
    bottom.set_xlabel("amplifier")
    bottom.set_xlim(-0.6, len(amps) - 0.4)
    figure.tight_layout(rect=(0, 0.22 * len(untrusted_lines) / height, 1, 1))
    for i, line in enumerate(untrusted_lines):
        figure.text(
            0.01,
            (0.22 * (len(untrusted_lines) - i) - 0.12) / height,
            line,
            color=UNTRUSTED_COLOR,
            fontsize=7,
            va="center",
        )
    return figure


def _draw_by_trust(ax, x, value, error, trusted, *, marker, label) -> None:
    """Error bars: trusted amplifiers filled and dark, untrusted hollow and red."""
    for ok, color, fill, name in (
        (True, TRUSTED_COLOR, TRUSTED_COLOR, "trusted"),
        (False, UNTRUSTED_COLOR, "none", "untrusted"),
    ):
        chosen = trusted == ok
        if not np.any(chosen):
            continue
        ax.errorbar(
            x[chosen],
            value[chosen],
            yerr=error[chosen],
            fmt=marker,
            color=color,
            mfc=fill,
            ms=6,
            capsize=2,
            label=f"{label} ({name})" if label else None,
        )


def ptc_figure(result: PhotonTransferResult, *, title: str = "") -> Figure:
    """Photon-transfer curves: temporal variance against mean signal, one panel per amplifier.

    Each panel shows the flat pairs' points and the fitted line ``variance = signal / gain``,
    with the gain, its error, the read noise and the verdict written in it.

    Raises
    ------
    ValueError
        If ``result`` holds no amplifier.
    """
    figure, axes = _amp_panels(len(result.amps), (5.0, 3.5))
    n = len(result.amps)
    for ax, amp in zip(axes.flat, result.amps, strict=False):
        signal = np.asarray(amp.signal_adu)
        ax.plot(signal, amp.variance_adu2, "o", color="0.2", label="flat pairs")
        line = np.linspace(0.0, 1.05 * signal.max(), 50)
        ax.plot(line, line / amp.gain_e_per_adu, color="tab:red", label="signal / gain")
        text = (
            f"amp {amp.amp}\ngain {amp.gain_e_per_adu:.4f} $\\pm$ "
            f"{amp.gain_err_e_per_adu:.4f} e$^-$/ADU\nread noise {amp.read_noise_e:.2f} e$^-$\n"
            + ("trusted" if amp.trusted else f"UNTRUSTED: {amp.verdict}")
        )
        ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=8)
        ax.set_xlabel("mean signal (ADU)")
        ax.set_ylabel("variance (ADU$^2$)")
        ax.legend(loc="lower right", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def diffim_figure(results, *, title: str = "", n_stamps: int = 8) -> Figure:
    """One visit's difference images: noise against the variance plane, counts, stamps.

    Parameters
    ----------
    results : sequence of (int, AlertProductionResult)
        Per CCD of the visit, its number and `dcflow.stages.alert_production` result.
    title : str
        Figure title.
    n_stamps : int
        Stamps of the brightest DIASources (largest ``|snr|``) shown.
    """
    fig = Figure(figsize=(12, 6))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, max(n_stamps // 2, 2) + 2)
    ax_noise = fig.add_subplot(grid[0, :2])
    ax_count = fig.add_subplot(grid[1, :2])
    bins = np.linspace(-6, 6, 121)
    bad = int(MaskPlane.NO_DATA | MaskPlane.EDGE | MaskPlane.BAD | MaskPlane.SAT | MaskPlane.CR)
    stamps = []
    for ccd, result in results:
        diff = result.deep_diff
        table = result.dia_sources
        use = ((diff.mask & bad) == 0) & np.isfinite(diff.variance) & (diff.variance > 0)
        if use.any():
            z = diff.image[use] / np.sqrt(diff.variance[use])
            ax_noise.hist(z, bins=bins, histtype="step", density=True,
                          label=f"ccd {ccd}: rms {result.noise_ratio:.3f}")  # fmt: skip
        negative = int(np.sum(table["isNegative"])) if len(table) else 0
        ax_count.bar(ccd, len(table) - negative, color="tab:blue")
        ax_count.bar(ccd, negative, bottom=len(table) - negative, color="tab:red")
        for row in table:
            stamps.append((abs(float(row["snr"])), diff.image, float(row["x"]), float(row["y"])))
    ax_noise.plot(bins, np.exp(-0.5 * bins**2) / math.sqrt(2 * math.pi), "k--", lw=1,
                  label="N(0, 1)")  # fmt: skip
    ax_noise.set_yscale("log")
    ax_noise.set_ylim(1e-6, 1)
    ax_noise.set_xlabel("difference / sqrt(variance)")
    ax_noise.legend(fontsize=6)
    ax_count.set_xlabel("ccd")
    ax_count.set_ylabel("DIASources (blue +, red -)")
    stamps.sort(key=lambda item: -item[0])
    ncol = max(n_stamps // 2, 2)
    for k, (snr, image, x, y) in enumerate(stamps[:n_stamps]):
        ax = fig.add_subplot(grid[k // ncol, 2 + k % ncol])
        ix, iy, h = round(x), round(y), 12
        cut = image[max(iy - h, 0) : iy + h + 1, max(ix - h, 0) : ix + h + 1]
        limit = float(np.max(np.abs(cut))) or 1.0
        ax.imshow(cut, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"S/N {snr:.0f}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return fig
