"""Figures of the science validation, returned as matplotlib Figures for scripts to save."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["accuracy_figure"]


def accuracy_figure(per_band: dict[str, dict[str, list[np.ndarray]]], title: str) -> plt.Figure:
    """Astrometric offsets and magnitude residuals of high-S/N stars, one colour per band.

    Parameters
    ----------
    per_band : dict
        Band -> ``{"offsets_mas": [...], "mag_residuals_mmag": [...], "mags": [...]}``, each
        a list of arrays (one per visit).
    title : str
        Figure title.
    """
    fig, (ax_astrom, ax_photom) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for band, lists in sorted(per_band.items()):
        values = {
            key: np.concatenate(arrays) if arrays else np.array([]) for key, arrays in lists.items()
        }
        offsets = values["offsets_mas"]
        if offsets.size:
            ax_astrom.hist(offsets, bins=30, histtype="step", label=f"{band} (N={offsets.size})")
            ax_photom.plot(values["mags"], values["mag_residuals_mmag"], ".", ms=3, label=band)
    ax_astrom.set_xlabel("offset to truth (mas)")
    ax_astrom.set_ylabel("stars")
    ax_photom.axhline(0, color="k", lw=0.5)
    ax_photom.set_xlabel("truth magnitude")
    ax_photom.set_ylabel("calibrated - truth (mmag)")
    for ax in (ax_astrom, ax_photom):
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig
