"""What the workflow must produce, computed from the registry and the layout.

rules/common.smk calls these thin functions for its input functions and targets; the planner
and tests call them too, so the job list has one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcflow.campaign.registry import Registry
from dcflow.layout import Layout

__all__ = ["Campaign", "filter_pattern"]


def filter_pattern(filters: list[str]) -> str:
    """A wildcard constraint matching exactly the campaign's filter names (a small fixed set)."""
    return "(?:" + "|".join(sorted(filters, key=len, reverse=True)) + ")" if filters else "[a-z]+"


@dataclass(frozen=True, slots=True)
class Campaign:
    """The campaign's layout and registry, with the questions the workflow asks of them.

    Parameters
    ----------
    layout : Layout
        Path templates.
    registry : Registry
        The ingested raw files.
    instrument : str
        Instrument name (data id key of every product).
    """

    layout: Layout
    registry: Registry
    instrument: str

    @property
    def science_ccds(self) -> list[int]:
        """CCDs read out in every science visit (each per-visit job writes all of them)."""
        return self.registry.ccds("object")

    def bias_inputs(self, ccd: int) -> list[str]:
        """Raw bias exposures of one CCD."""
        return self.registry.calib_paths("bias", ccd)

    def flat_inputs(self, ccd: int, band: str) -> list[str]:
        """Raw flat exposures of one CCD in one filter."""
        return self.registry.calib_paths("flat", ccd, band)

    def visit_raws(self, visit: int) -> list[str]:
        """Raw files of one science visit, in `science_ccds` order.

        Raises
        ------
        KeyError
            If the visit lacks one of the campaign's CCDs.
        """
        paths = self.registry.raw_paths(visit)
        missing = [ccd for ccd in self.science_ccds if ccd not in paths]
        if missing:
            raise KeyError(f"visit {visit} has no raw for ccd(s) {missing} in {self.registry.path}")
        return [paths[ccd] for ccd in self.science_ccds]

    def visit_calibs(self, visit: int, dataset_type: str) -> list[str]:
        """Bias or flat products one science visit needs, in `science_ccds` order."""
        band = self.registry.visit_filter(visit)
        return [self.layout.path(dataset_type, ccd=ccd, filter=band) for ccd in self.science_ccds]

    def visit_outputs(self, dataset_type: str) -> list[str]:
        """Per-CCD output patterns of a per-visit job (``{visit}`` left as a wildcard)."""
        return [self.layout.pattern(dataset_type, ccd=ccd) for ccd in self.science_ccds]

    def visit_products(self, dataset_type: str) -> list[str]:
        """Every per-visit, per-CCD product of one dataset type (``calexp``, ``src``)."""
        return [
            self.layout.path(dataset_type, visit=visit, ccd=ccd)
            for visit, _ in self.registry.science_visits()
            for ccd in self.science_ccds
        ]
