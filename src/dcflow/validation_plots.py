"""Figures of the science validation, with their numbers, targets and pass/fail verdicts.

The targets are the campaign's science requirements for processCcd against truth (issue 2):
they turn the metrics of ``science_validation.json`` into a verdict a reader can check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "SCIENCE_TARGETS",
    "ScienceTarget",
    "accuracy_figure",
    "target_verdicts",
    "validation_summary_figure",
]

PASS_COLOUR = "#2ca02c"
FAIL_COLOUR = "#d62728"


@dataclass(frozen=True, slots=True)
class ScienceTarget:
    """One science requirement on a per-visit metric of ``science_validation.json``.

    ``bound`` is ``"max"`` (value <= limit), ``"min"`` (value >= limit) or ``"abs_max"``
    (|value| <= limit).
    """

    metric: str
    label: str
    unit: str
    limit: float
    bound: str

    def passes(self, value: float) -> bool:
        """Whether ``value`` meets the target (NaN never does)."""
        if not math.isfinite(value):
            return False
        if self.bound == "min":
            return value >= self.limit
        if self.bound == "abs_max":
            return abs(value) <= self.limit
        return value <= self.limit

    @property
    def text(self) -> str:
        """The target as a reader writes it: ``<= 20 mas``."""
        sign = {"min": ">=", "max": "<=", "abs_max": "|x| <="}[self.bound]
        return f"{sign} {self.limit:g} {self.unit}".strip()


SCIENCE_TARGETS: tuple[ScienceTarget, ...] = (
    ScienceTarget("astrom_rms_mas", "astrometric rms (S/N > 100)", "mas", 20.0, "max"),
    ScienceTarget("mag_rms_mmag", "photometric rms (S/N > 100)", "mmag", 10.0, "max"),
    ScienceTarget("mag_median_mmag", "median magnitude offset", "mmag", 5.0, "abs_max"),
    ScienceTarget("completeness", "completeness at S/N 10", "", 0.95, "min"),
)
"""processCcd against truth: 20 mas and 10 mmag rms for bright stars (reference-catalog and
zero-point limited), calibration bias under 5 mmag, 95 % of isolated S/N > 10 stars found."""


def target_verdicts(
    visits: Mapping[str, Mapping[str, object]],
    targets: Sequence[ScienceTarget] = SCIENCE_TARGETS,
) -> dict[str, dict[str, bool]]:
    """Per visit, per target metric: whether the visit meets it."""
    return {
        visit: {t.metric: t.passes(float(metrics.get(t.metric, math.nan))) for t in targets}
        for visit, metrics in visits.items()
    }


def accuracy_figure(
    per_band: dict[str, dict[str, list[np.ndarray]]],
    title: str,
    *,
    targets: Sequence[ScienceTarget] = SCIENCE_TARGETS,
) -> plt.Figure:
    """Astrometric offsets and magnitude residuals of high-S/N stars, one colour per band.

    Each band's legend gives its star count, rms and pass/fail against the targets, which
    are drawn as dashed lines; legends sit outside the data.

    Parameters
    ----------
    per_band : dict
        Band -> ``{"offsets_mas": [...], "mag_residuals_mmag": [...], "mags": [...]}``, each
        a list of arrays (one per visit).
    title : str
        Figure title.
    targets : sequence of ScienceTarget
        The rms targets (metrics ``astrom_rms_mas`` and ``mag_rms_mmag``) to draw.
    """
    limits = {t.metric: t for t in targets}
    astrom_target = limits.get("astrom_rms_mas")
    photom_target = limits.get("mag_rms_mmag")
    fig, (ax_astrom, ax_photom) = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    for band, lists in sorted(per_band.items()):
        values = {
            key: np.concatenate(arrays) if arrays else np.array([]) for key, arrays in lists.items()
        }
        offsets = values["offsets_mas"]
        if not offsets.size:
            continue
        rms_mas = float(np.sqrt(np.mean(offsets**2)))
        verdict = "" if astrom_target is None else _verdict(astrom_target, rms_mas)
        ax_astrom.hist(
            offsets,
            bins=30,
            histtype="step",
            label=f"{band}: N={offsets.size}, rms {rms_mas:.1f} mas{verdict}",
        )
        residuals = values["mag_residuals_mmag"]
        rms_mmag = float(np.std(residuals)) if residuals.size else math.nan  # as the metric
        verdict = "" if photom_target is None else _verdict(photom_target, rms_mmag)
        ax_photom.plot(
            values["mags"], residuals, ".", ms=3, label=f"{band}: rms {rms_mmag:.1f} mmag{verdict}"
        )
    if astrom_target is not None:
        ax_astrom.axvline(
            astrom_target.limit, color="k", ls="--", lw=1, label=f"target {astrom_target.text}"
        )
    ax_photom.axhline(0, color="k", lw=0.5)
    if photom_target is not None:
        for sign in (1, -1):
            ax_photom.axhline(
                sign * photom_target.limit,
                color="k",
                ls="--",
                lw=1,
                label=f"target rms {photom_target.text}" if sign > 0 else None,
            )
    ax_astrom.set_xlabel("offset to truth (mas)")
    ax_astrom.set_ylabel("stars")
    ax_photom.set_xlabel("truth magnitude")
    ax_photom.set_ylabel("calibrated - truth (mmag)")
    for ax in (ax_astrom, ax_photom):
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    fig.suptitle(title)
    return fig


def _verdict(target: ScienceTarget, value: float) -> str:
    return f" ({target.text}: {'pass' if target.passes(value) else 'FAIL'})"


def validation_summary_figure(
    visits: Mapping[str, Mapping[str, object]],
    *,
    targets: Sequence[ScienceTarget] = SCIENCE_TARGETS,
    title: str = "science validation per visit",
) -> plt.Figure:
    """One panel per target: each visit's value (green pass, red fail) against the target line.

    Parameters
    ----------
    visits : mapping
        Visit -> its metrics (``science_validation.json``'s ``visits``).
    """
    names = sorted(visits, key=lambda v: (str(visits[v].get("band", "")), v))
    fig, axes = plt.subplots(
        1, len(targets), figsize=(3.6 * len(targets), 3.8), layout="constrained", squeeze=False
    )
    for ax, target in zip(axes[0], targets, strict=True):
        values = np.array([float(visits[v].get(target.metric, math.nan)) for v in names])
        ok = np.array([target.passes(x) for x in values], dtype=bool)
        x = np.arange(len(names))
        ax.bar(x, np.nan_to_num(values), color=np.where(ok, PASS_COLOUR, FAIL_COLOUR))
        for sign in (1, -1) if target.bound == "abs_max" else (1,):
            ax.axhline(sign * target.limit, color="k", ls="--", lw=1)
        n_pass = int(ok.sum())
        ax.set_title(
            f"{target.label}\ntarget {target.text}: {n_pass}/{len(names)} visits pass",
            fontsize=9,
        )
        ax.set_xticks(x, [f"{v}\n{visits[v].get('band', '')}" for v in names], fontsize=7)
        ax.set_ylabel(f"{target.metric} ({target.unit})" if target.unit else target.metric)
        if target.bound == "min":
            low = min(np.nanmin(values) if values.size else target.limit, target.limit)
            ax.set_ylim(max(0.0, low - 0.05), 1.01)
    fig.suptitle(title)
    return fig
