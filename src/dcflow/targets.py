"""What the workflow must produce, computed from the registry and the layout.

rules/common.smk calls these thin functions for its input functions and targets; the planner
and tests call them too, so the job list has one definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dcflow.campaign.registry import Registry
from dcflow.campaign.skymap import SkyMapConfig, make_tracts, patches_for_pointings
from dcflow.configs import from_mapping
from dcflow.layout import Layout

__all__ = [
    "PROCESSED_INSTRUMENTS",
    "SIMULATED_INSTRUMENTS",
    "Campaign",
    "JobSpec",
    "filter_pattern",
    "payload_script",
]

SIMULATED_INSTRUMENTS = frozenset({"cfht_sim"})
"""Instruments whose campaigns carry a truth catalog (science validation runs on them)."""

PROCESSED_INSTRUMENTS = frozenset({"sdss"})
"""Instruments whose frames arrive bias-subtracted and flat-fielded (no ISR, no calibs)."""


def filter_pattern(filters: list[str]) -> str:
    """A wildcard constraint matching exactly the campaign's filter names (a small fixed set)."""
    return "(?:" + "|".join(sorted(filters, key=len, reverse=True)) + ")" if filters else "[a-z]+"


def payload_script(config: Mapping[str, Any], stage: str) -> str:
    """Name (no suffix) of the script under scripts/ that a stage's rule runs.

    The stage's own script, or ``noop`` when ``campaign.payload`` is ``noop`` (placeholder
    outputs, same DAG).
    """
    return "noop" if config["campaign"].get("payload", "full") == "noop" else stage


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of the workflow as the planner sees it (mirrors one Snakemake job).

    Attributes
    ----------
    rule : str
        Rule name (the stage).
    data_id : mapping
        The job's wildcards as a data id (empty for campaign-wide jobs).
    outputs : tuple of str
        Output paths (what the job writes; no logs or benchmarks).
    inputs : tuple of str
        Input paths, products of other jobs or raw data.
    filter : str or None
        Filter of the data the job processes, if it has one.
    tract : int or None
        Tract of the data the job processes, if it has one.
    """

    rule: str
    data_id: Mapping[str, int | str]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    filter: str | None = None
    tract: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


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
    fe55: Any = None
    skymap: Any = None
    patch_visits: Mapping[tuple[int, str], tuple[int, ...]] = field(default_factory=dict)
    visit_bands: Mapping[int, str] = field(default_factory=dict)
    shard_targets: tuple[str, ...] | None = None
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Answers computed once per Campaign (CCD list, visit -> patches, per-visit calexps):
    Snakemake calls the input functions once per job, a tract has thousands."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], layout: Layout | None = None) -> Campaign:
        """The campaign of a validated config (its layout, registry, instrument and Fe55 part).

        With a ``shard`` key (a manifest written by `dcflow.campaign.shards.write_manifest`),
        the registry is read for the manifest's visits only and `final_targets` is the
        shard's targets: the bounded DAG of one shard.

        Raises
        ------
        FileNotFoundError
            If the registry does not exist yet (run `dcflow ingest`).
        """
        from dcflow.fe55_targets import fe55_config

        layout = layout or Layout.from_config(config)
        shard_targets = None
        if config.get("shard"):
            # shard mode (`dcflow run --sharded`): only the manifest's visits, its targets
            from dcflow.campaign.shards import VisitSubsetRegistry, read_manifest

            manifest = read_manifest(config["shard"])
            registry: Registry = VisitSubsetRegistry(
                layout.path("registry"), manifest, instrument=config["campaign"]["instrument"]
            )
            shard_targets = manifest.targets
        else:
            registry = Registry(layout.path("registry"))
        skymap = None
        patch_visits: dict[tuple[int, str], tuple[int, ...]] = {}
        if config.get("skymap"):
            skymap = from_mapping(SkyMapConfig, config["skymap"])
            pointings = [
                (r.visit, r.ra_deg, r.dec_deg)
                for r in registry.records(obstype="object")
                if r.ra_deg is not None and r.dec_deg is not None
            ]
            overlaps = patches_for_pointings(
                make_tracts(skymap), pointings, field_radius_deg=skymap.field_radius_deg
            )
            patch_visits = {key: tuple(visits) for key, visits in overlaps.items()}
        return cls(
            layout=layout,
            registry=registry,
            instrument=config["campaign"]["instrument"],
            fe55=fe55_config(config),
            skymap=skymap,
            patch_visits=patch_visits,
            visit_bands=dict(registry.science_visits()),
            shard_targets=shard_targets,
        )

    def visit_patches(self, visit: int) -> list[tuple[int, str]]:
        """``(tract, patch)`` of every patch a visit may overlap (planning-time overlaps).

        In ``patch_visits`` order; the visit -> patches map is built once (one pass over the
        overlaps), not one scan of every overlap per visit.
        """
        by_visit = self._memo.get("visit_patches")
        if by_visit is None:
            by_visit = {}
            for key, visits in self.patch_visits.items():
                for v in visits:
                    by_visit.setdefault(v, []).append(key)
            self._memo["visit_patches"] = by_visit
        return list(by_visit.get(visit, ()))

    def visit_band(self, visit: int) -> str:
        """The filter of one visit (from `visit_bands`, else asked of the registry).

        Raises
        ------
        KeyError
            If the visit is not in the registry.
        """
        band = self.visit_bands.get(visit)
        return band if band is not None else self.registry.visit_filter(visit)

    def visit_calexps(self, visit: int) -> list[str]:
        """The calexps of one visit, in `science_ccds` order (built once per visit)."""
        memo = self._memo.setdefault("visit_calexps", {})
        paths = memo.get(visit)
        if paths is None:
            path = self.layout.path
            paths = memo[visit] = tuple(
                path("calexp", visit=visit, ccd=ccd) for ccd in self.science_ccds
            )
        return list(paths)

    def patch_bands(self, tract: int, patch: str) -> list[str]:
        """Filters with at least one visit overlapping a patch."""
        visits = self.patch_visits.get((tract, patch), ())
        return sorted({self.visit_bands[v] for v in visits})

    def coadd_warps(self, tract: int, patch: str, band: str) -> list[str]:
        """Warps of one patch in one filter: one per overlapping visit of that filter."""
        return [
            self.layout.path("warp", tract=tract, patch=patch, visit=visit)
            for visit in self.patch_visits.get((tract, patch), ())
            if self.visit_bands[visit] == band
        ]

    def patch_coadds(self, tract: int, patch: str) -> list[str]:
        """The deepCoadd of each filter with data on one patch, in filter order."""
        return [
            self.layout.path("deepCoadd", filter=band, tract=tract, patch=patch)
            for band in self.patch_bands(tract, patch)
        ]

    def forced_objects(self, visit: int) -> list[str]:
        """Object tables of the patches a visit overlaps (forced photometry's positions)."""
        return [
            self.layout.path("object", tract=tract, patch=patch)
            for tract, patch in self.visit_patches(visit)
        ]

    def coadd_targets(self) -> list[str]:
        """Every templateCoadd, Object table and forced_src (none without a sky map)."""
        if self.skymap is None:
            return []
        targets = [
            self.layout.path("templateCoadd", filter=band, tract=tract, patch=patch)
            for tract, patch in self.patch_visits
            for band in self.patch_bands(tract, patch)
        ]
        targets += [self.layout.path("object", tract=t, patch=p) for t, p in self.patch_visits]
        targets += [
            self.layout.path("forced_src", visit=visit, ccd=ccd)
            for visit in self.visit_bands
            if self.visit_patches(visit)
            for ccd in self.science_ccds
        ]
        return targets

    def final_targets(self) -> list[str]:
        """What rule ``all`` asks for: every calexp and src, the validation, the Fe55 gains.

        In shard mode (config ``shard``: a manifest path), the shard's targets only.
        """
        if self.shard_targets is not None:
            return list(self.shard_targets)
        targets = self.visit_products("calexp") + self.visit_products("src")
        if self.has_truth:
            targets.append(self.layout.path("science_validation"))
        return targets + self.coadd_targets() + self.fe55_targets()

    def fe55_targets(self) -> list[str]:
        """The Fe55 per-sensor summaries (none when the config lists no sensor)."""
        from dcflow.fe55_targets import fe55_targets

        return [] if self.fe55 is None else fe55_targets(self.fe55, self.layout)

    @property
    def science_ccds(self) -> list[int]:
        """CCDs read out in every science visit (each per-visit job writes all of them).

        Asked of the registry once per Campaign (a ``SELECT DISTINCT`` over the science rows).
        """
        ccds = self._memo.get("science_ccds")
        if ccds is None:
            ccds = self._memo["science_ccds"] = tuple(self.registry.ccds("object"))
        return list(ccds)

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
        band = self.visit_band(visit)
        return [self.layout.path(dataset_type, ccd=ccd, filter=band) for ccd in self.science_ccds]

    @property
    def needs_calibs(self) -> bool:
        """Whether science frames need master bias and flat (raw cameras) or not (SDSS fpC)."""
        return self.instrument not in PROCESSED_INSTRUMENTS

    def _coadd_jobs(self) -> list[JobSpec]:
        """The jobs of rules/coadd.smk (mirrors it, as `jobs` does the other rules)."""
        if self.skymap is None:
            return []
        path = self.layout.path
        jobs: list[JobSpec] = []
        for (tract, patch), visits in self.patch_visits.items():
            tile = {"tract": tract, "patch": patch}
            for visit in visits:
                calexps = tuple(self.visit_calexps(visit))
                warp = path("warp", visit=visit, **tile)
                band = self.visit_bands[visit]
                jobs.append(
                    JobSpec("make_warp", {"visit": visit, **tile}, (warp,), calexps, band, tract)
                )
            for band in self.patch_bands(tract, patch):
                outputs = (
                    path("deepCoadd", filter=band, **tile),
                    path("templateCoadd", filter=band, **tile),
                )
                warps = tuple(self.coadd_warps(tract, patch, band))
                jobs.append(
                    JobSpec("assemble_coadd", {"filter": band, **tile}, outputs, warps, band, tract)
                )
            outputs = (path("deepCoadd_det", **tile), path("object", **tile))
            jobs.append(
                JobSpec(
                    "measure_patch",
                    tile,
                    outputs,
                    tuple(self.patch_coadds(tract, patch)),
                    None,
                    tract,
                )
            )
        for visit, band in self.visit_bands.items():
            objects = self.forced_objects(visit)
            if not objects:
                continue
            calexps = tuple(self.visit_calexps(visit))
            outputs = tuple(path("forced_src", visit=visit, ccd=c) for c in self.science_ccds)
            jobs.append(
                JobSpec("forced_photometry", {"visit": visit}, outputs, (*calexps, *objects), band)
            )
        return jobs

    def visit_inputs(self, visit: int) -> dict[str, list[str] | str]:
        """Every input of one visit's processing job, by name, each in `science_ccds` order.

        Raw cameras need their master ``biases`` and ``flats``; SDSS corrected frames need
        their mask (fpM), ``psfields`` and ``tsfields`` files instead. Unused names are empty.
        """
        band = self.visit_band(visit)
        inputs: dict[str, list[str] | str] = {
            name: [] for name in ("biases", "flats", "masks", "psfields", "tsfields")
        }
        inputs["raws"] = self.visit_raws(visit)
        inputs["refcat"] = self.layout.path("refcat", instrument=self.instrument)
        if self.needs_calibs:
            inputs["biases"] = self.visit_calibs(visit, "bias")
            inputs["flats"] = self.visit_calibs(visit, "flat")
        else:
            for name, dataset_type in (
                ("masks", "sdss_mask"),
                ("psfields", "sdss_psfield"),
                ("tsfields", "sdss_tsfield"),
            ):
                inputs[name] = [
                    self.layout.path(dataset_type, ccd=ccd, filter=band, instrument=self.instrument)
                    for ccd in self.science_ccds
                ]
        return inputs

    @property
    def has_truth(self) -> bool:
        """Whether the instrument is simulated, so products can be scored against truth."""
        return self.instrument in SIMULATED_INSTRUMENTS

    def visit_outputs(self, dataset_type: str) -> list[str]:
        """Per-CCD output patterns of a per-visit job (``{visit}`` left as a wildcard)."""
        return [self.layout.pattern(dataset_type, ccd=ccd) for ccd in self.science_ccds]

    def visit_products(self, dataset_type: str) -> list[str]:
        """Every per-visit, per-CCD product of one dataset type (``calexp``, ``src``)."""
        ccds = self.science_ccds  # one query, not one per visit (2000 visits: 60 s -> 0.1 s)
        return [
            self.layout.path(dataset_type, visit=visit, ccd=ccd)
            for visit, _ in self.registry.science_visits()
            for ccd in ccds
        ]

    def jobs(self) -> list[JobSpec]:
        """Every job the default target (rule ``all``) needs, as Snakemake would build them.

        This mirrors rules/*.smk (bias per CCD, flat per filter and CCD, process_visit per
        science visit, science_validation, all); the planner counts it and tests check that
        the counts equal ``snakemake -n``'s, so a new rule must be added here too. The
        registry is read in one query for the science raws (not one per visit).

        Raises
        ------
        KeyError
            If a science visit lacks one of the campaign's CCDs.
        """
        path = self.layout.path
        ccds = self.science_ccds
        raws: dict[int, dict[int, str]] = {}
        bands: dict[int, str] = {}
        for record in self.registry.records(obstype="object"):
            raws.setdefault(record.visit, {})[record.ccd] = record.path
            bands[record.visit] = record.filter
        bias = {ccd: path("bias", ccd=ccd) for ccd in ccds}
        calib_ccds = ccds if self.needs_calibs else []
        jobs: list[JobSpec] = [
            JobSpec("bias", {"ccd": ccd}, (bias[ccd],), tuple(self.bias_inputs(ccd)))
            for ccd in calib_ccds
        ]
        flat = {}
        for band in sorted(set(bands.values())) if self.needs_calibs else []:
            for ccd in ccds:
                flat[band, ccd] = path("flat", filter=band, ccd=ccd)
                inputs = (*self.flat_inputs(ccd, band), bias[ccd])
                jobs.append(
                    JobSpec("flat", {"filter": band, "ccd": ccd}, (flat[band, ccd],), inputs, band)
                )
        refcat = path("refcat", instrument=self.instrument)
        calexps: list[str] = []
        srcs: list[str] = []
        for visit in sorted(raws):
            band = bands[visit]
            missing = [ccd for ccd in ccds if ccd not in raws[visit]]
            if missing:
                raise KeyError(
                    f"visit {visit} has no raw for ccd(s) {missing} in {self.registry.path}"
                )
            visit_calexps = [path("calexp", visit=visit, ccd=ccd) for ccd in ccds]
            visit_srcs = [path("src", visit=visit, ccd=ccd) for ccd in ccds]
            calexps += visit_calexps
            srcs += visit_srcs
            if self.needs_calibs:
                calibs = [*(bias[ccd] for ccd in ccds), *(flat[band, ccd] for ccd in ccds)]
            else:
                calibs = [
                    p
                    for key, paths in self.visit_inputs(visit).items()
                    if key not in ("raws", "refcat")
                    for p in paths
                ]
            inputs = (*(raws[visit][ccd] for ccd in ccds), *calibs, refcat)
            jobs.append(
                JobSpec(
                    "process_visit",
                    {"visit": visit},
                    (*visit_calexps, *visit_srcs),
                    inputs,
                    band,
                )
            )
        if self.has_truth:
            truth = path("truth", instrument=self.instrument)
            jobs.append(
                JobSpec(
                    "science_validation",
                    {},
                    (path("science_validation"), path("science_validation_plot")),
                    (*srcs, *calexps, truth),
                )
            )
        jobs += self._coadd_jobs()
        if self.fe55 is not None:
            from dcflow.fe55_targets import fe55_jobs

            jobs += fe55_jobs(self.fe55, self.layout)
        jobs.append(JobSpec(rule="all", data_id={}, outputs=(), inputs=tuple(self.final_targets())))
        return jobs
