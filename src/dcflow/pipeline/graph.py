"""The job graph of one campaign: the pipeline spec laid over a `CampaignIndex`.

Each active stage gets its jobs as data id columns (dense integer arrays: visit, ccd and patch
as indices into the index's arrays, filter as a band index), and each input that reads an
upstream product gets a `Relation`: which upstream jobs each job reads, as index arrays. The
analytic planner runs its needrun passes over these relations; Snakemake's input functions
and the reference planner read one job's inputs from the same arrays, so the DAG has one
definition (`dcflow.pipeline.spec`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dcflow.campaign.index import CampaignIndex
from dcflow.campaign.registry import SENSOR_OBSTYPES
from dcflow.dataids import DATA_ID_KEYS, INT_KEYS
from dcflow.instruments.camera import load_camera
from dcflow.jobspec import JobSpec
from dcflow.layout import CAMERA_DATASETS
from dcflow.ledger import parse_tile
from dcflow.pipeline.payload import payload_script
from dcflow.pipeline.spec import STAGES, TARGET_RULE, Input, Stage, stage

__all__ = ["JobGraph", "Relation", "StageJobs"]

_KEY_LIMIT = 1 << 26
"""Largest mixed-radix key space used directly as bincount bins (else keys are factorized)."""


@dataclass(frozen=True, slots=True)
class StageJobs:
    """The jobs of one stage as columns (one entry per job).

    Attributes
    ----------
    stage : Stage
        The stage.
    columns : dict of numpy.ndarray
        Per key or attribute of the stage's space: ``visit``/``ccd``/``patch`` as indices into
        the index's ``visits``/``ccds``/patch arrays, ``filter`` as an index into ``filters``,
        ``tract`` and ``exposure`` as values; Fe55 sensors' ``ccd`` as the sensor number.
    n_jobs : int
        Number of jobs.
    """

    stage: Stage
    columns: dict[str, np.ndarray]
    n_jobs: int


@dataclass(frozen=True, slots=True)
class Relation:
    """Which upstream jobs each job of a stage reads for one input.

    Either a key join (job ``d`` reads every upstream job ``u`` with ``up_key[u] ==
    down_key[d]``; ``n_keys`` bins) or explicit pairs (``down[k]`` reads ``up[k]``).
    """

    upstream: str
    dataset: str
    n_down: int
    down_key: np.ndarray | None = None
    up_key: np.ndarray | None = None
    n_keys: int = 0
    down: np.ndarray | None = None
    up: np.ndarray | None = None
    _order: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def downstream_any(self, up_flags: np.ndarray, n_down: int) -> np.ndarray:
        """Per downstream job: whether any upstream job it reads has its flag set."""
        if self.down_key is not None:
            per_key = np.bincount(self.up_key[up_flags], minlength=self.n_keys) > 0
            return per_key[self.down_key]
        return np.bincount(self.down[up_flags[self.up]], minlength=n_down)[:n_down] > 0

    def upstream_any(self, down_flags: np.ndarray, n_up: int) -> np.ndarray:
        """Per upstream job: whether any downstream job reading it has its flag set."""
        if self.down_key is not None:
            per_key = np.bincount(self.down_key[down_flags], minlength=self.n_keys) > 0
            return per_key[self.up_key]
        return np.bincount(self.up[down_flags[self.down]], minlength=n_up)[:n_up] > 0

    def downstream_max(self, up_values: np.ndarray, n_down: int) -> np.ndarray:
        """Per downstream job: the largest value over the upstream jobs it reads (-inf: none)."""
        out = np.full(n_down, -np.inf)
        if self.down_key is not None:
            per_key = np.full(self.n_keys, -np.inf)
            np.maximum.at(per_key, self.up_key, up_values)
            return per_key[self.down_key]
        np.maximum.at(out, self.down, up_values[self.up])
        return out

    def upstream_of(self, job: int) -> np.ndarray:
        """Indices of the upstream jobs one job reads, in upstream order."""
        if not self._order:
            if self.down_key is not None:
                order = np.argsort(self.up_key, kind="stable")
                bins = np.arange(self.n_keys + 1)
                self._order["bounds"] = np.searchsorted(self.up_key[order], bins)
                self._order["order"] = order
            else:
                by_down = np.argsort(self.down, kind="stable")
                bins = np.arange(self.n_down + 1)
                self._order["bounds"] = np.searchsorted(self.down[by_down], bins)
                self._order["order"] = self.up[by_down]
        slot = int(self.down_key[job]) if self.down_key is not None else job
        bounds = self._order["bounds"]
        return self._order["order"][bounds[slot] : bounds[slot + 1]]


_SENSOR_SPACES = frozenset({"sensor_exposure", "sensor", "ptc_sensor"})
"""Spaces whose ``ccd`` column holds sensor numbers, not indices into the science CCDs."""


class JobGraph:
    """The campaign's jobs and relations, derived from the spec and a `CampaignIndex`.

    Parameters
    ----------
    index : CampaignIndex
        The campaign.
    stages : sequence of Stage, optional
        The pipeline (default: `dcflow.pipeline.spec.STAGES`).
    """

    def __init__(self, index: CampaignIndex, stages: Sequence[Stage] = STAGES) -> None:
        self.index = index
        self.conditions = {
            "needs_calibs": bool(index.needs_calibs),
            "processed_frames": not index.needs_calibs,
            "has_truth": bool(index.has_truth) and index.n_visits > 0,
            "has_skymap": index.skymap is not None,
            "has_fe55": len(index.fe55_ccd) > 0,
        }
        self.stages = tuple(s for s in stages if self.holds(s.when))
        self.producer: dict[str, Stage] = {}
        for s in stages:
            for out in s.outputs:
                self.producer[out.dataset] = s
        self._jobs: dict[str, StageJobs] = {}
        self._relations: dict[tuple[str, str], Relation] = {}
        self._lookup: dict[str, dict[tuple, int]] = {}
        self._key_order: dict[str, tuple[list[int], np.ndarray, np.ndarray]] = {}

    # --- stages and jobs ----------------------------------------------------------------------

    def holds(self, condition: str) -> bool:
        """Whether a `CONDITIONS` entry holds for this campaign (empty: always)."""
        return not condition or self.conditions[condition]

    def stage(self, rule: str) -> Stage:
        """A stage by rule name (active or not: rules exist for every stage).

        Raises
        ------
        KeyError
            If the pipeline has no such stage.
        """
        return stage(rule)

    def active(self, rule: str) -> bool:
        """Whether a stage has jobs in this campaign."""
        return any(s.rule == rule for s in self.stages)

    def inputs(self, stage: Stage) -> tuple[Input, ...]:
        """The stage's inputs that exist for this campaign."""
        return tuple(i for i in stage.inputs if self.holds(i.when))

    def upstream_inputs(self, stage: Stage) -> list[tuple[Input, Stage]]:
        """Inputs read from an active upstream stage, with that stage."""
        active = {s.rule for s in self.stages}
        out = []
        for item in self.inputs(stage):
            producer = self.producer.get(item.dataset)
            if producer is not None and producer.rule in active:
                out.append((item, producer))
        return out

    def jobs(self, rule: str) -> StageJobs:
        """The jobs of one stage (computed once; none for an inactive stage)."""
        jobs = self._jobs.get(rule)
        if jobs is None:
            s = self.stage(rule)
            columns = self._space_columns(s.space)
            if not self.active(rule):
                columns = {k: v[:0] for k, v in columns.items()}
            n = len(next(iter(columns.values()))) if columns else int(self.active(rule))
            jobs = self._jobs[rule] = StageJobs(s, columns, n)
        return jobs

    def _space_columns(self, space: str) -> dict[str, np.ndarray]:
        index = self.index
        nc, nb = len(index.ccds), len(index.filters)
        ccd_idx = np.arange(nc, dtype=np.int64)
        if space == "ccd":
            return {"ccd": ccd_idx}
        if space == "filter_ccd":
            return {
                "filter": np.repeat(np.arange(nb, dtype=np.int64), nc),
                "ccd": np.tile(ccd_idx, nb),
            }
        if space == "visit":
            return {
                "visit": np.arange(index.n_visits, dtype=np.int64),
                "filter": index.visit_band.astype(np.int64),
            }
        if space == "campaign":
            return {}
        if space == "visit_patch":
            visit = index.pair_visit.astype(np.int64)
            patch = index.pair_patch.astype(np.int64)
            return {
                "visit": visit,
                "tract": index.patch_tract[patch].astype(np.int64),
                "patch": patch,
                "filter": index.visit_band[visit].astype(np.int64),
            }
        if space == "patch_filter":
            patch, band = np.nonzero(index.patch_band_visits > 0)
            return {
                "filter": band.astype(np.int64),
                "tract": index.patch_tract[patch].astype(np.int64),
                "patch": patch.astype(np.int64),
            }
        if space == "patch":
            patch = np.arange(index.n_patches, dtype=np.int64)
            return {"tract": index.patch_tract.astype(np.int64), "patch": patch}
        if space == "overlapping_visit":
            visit = np.flatnonzero(index.forced_visit_mask).astype(np.int64)
            return {"visit": visit, "filter": index.visit_band[visit].astype(np.int64)}
        if space == "sensor_exposure":
            return {
                "ccd": index.fe55_ccd.astype(np.int64),
                "exposure": index.fe55_exposure.astype(np.int64),
            }
        if space == "sensor":
            return {"ccd": index.sensors.astype(np.int64)}
        if space == "ptc_sensor":
            return {"ccd": index.ptc_sensors.astype(np.int64)}
        raise KeyError(f"unknown job space {space!r}")

    # --- relations -----------------------------------------------------------------------------

    def relation(self, rule: str, item: Input) -> Relation:
        """The relation of one input of a stage to its upstream stage (computed once)."""
        key = (rule, item.name)
        found = self._relations.get(key)
        if found is not None:
            return found
        down = self.jobs(rule)
        producer = self.producer[item.dataset]
        up = self.jobs(producer.rule)
        if item.relation == "overlap":
            found = self._overlap_relation(down, up, producer.rule, item.dataset)
        else:
            found = self._match_relation(down, up, producer.rule, item)
        self._relations[key] = found
        return found

    def _match_relation(
        self, down: StageJobs, up: StageJobs, upstream: str, item: Input
    ) -> Relation:
        down_key = np.zeros(down.n_jobs, dtype=np.int64)
        up_key = np.zeros(up.n_jobs, dtype=np.int64)
        n_keys = 1
        for name in item.match:
            d, u = down.columns[name], up.columns[name]
            radix = int(max(d.max(initial=-1), u.max(initial=-1))) + 1
            down_key = down_key * radix + d
            up_key = up_key * radix + u
            n_keys *= max(radix, 1)
        if n_keys > _KEY_LIMIT:
            unique, inverse = np.unique(np.concatenate([down_key, up_key]), return_inverse=True)
            down_key, up_key = inverse[: down.n_jobs], inverse[down.n_jobs :]
            n_keys = len(unique)
        return Relation(
            upstream, item.dataset, down.n_jobs, down_key=down_key, up_key=up_key, n_keys=n_keys
        )

    def _overlap_relation(
        self, down: StageJobs, up: StageJobs, upstream: str, dataset: str
    ) -> Relation:
        index = self.index
        if "visit" not in down.columns:  # a patch's job reads every overlapping visit's
            patch_job = np.full(index.n_patches, -1, dtype=np.int64)
            patch_job[down.columns["patch"]] = np.arange(down.n_jobs)
            visit_job = np.full(index.n_visits, -1, dtype=np.int64)
            visit_job[up.columns["visit"]] = np.arange(up.n_jobs)
            d = patch_job[index.pair_patch]
            u = visit_job[index.pair_visit]
            keep = (d >= 0) & (u >= 0)
            order = np.lexsort((u[keep], d[keep]))
            return Relation(upstream, dataset, down.n_jobs, down=d[keep][order], up=u[keep][order])
        position = np.full(index.n_visits, -1, dtype=np.int64)
        position[down.columns["visit"]] = np.arange(down.n_jobs)
        n_bands = len(index.filters) if "filter" in up.columns else 1
        band = up.columns.get("filter", 0)
        patch_job = np.full(index.n_patches * n_bands, -1, dtype=np.int64)
        patch_job[up.columns["patch"] * n_bands + band] = np.arange(up.n_jobs)
        d = position[index.pair_visit]
        pair_band = index.visit_band[index.pair_visit].astype(np.int64) if n_bands > 1 else 0
        u = patch_job[index.pair_patch * n_bands + pair_band]
        keep = (d >= 0) & (u >= 0)
        return Relation(upstream, dataset, down.n_jobs, down=d[keep], up=u[keep])

    # --- data ids and paths --------------------------------------------------------------------

    def data_id(self, rule: str, job: int, *, attributes: bool = False) -> dict[str, Any]:
        """The data id of one job (its wildcards; with ``attributes`` the visit's filter too)."""
        jobs = self.jobs(rule)
        keys = jobs.stage.keys
        names = tuple(jobs.columns) if attributes else keys
        sensors = jobs.stage.space in _SENSOR_SPACES
        return {name: self._value(name, int(jobs.columns[name][job]), sensors) for name in names}

    def _value(self, name: str, value: int, sensors: bool) -> int | str:
        index = self.index
        if name == "visit":
            return int(index.visits[value])
        if name == "filter":
            return index.filters[value]
        if name == "patch":
            return index.patch_name(value)
        if name == "ccd" and not sensors:
            return int(index.ccds[value])
        return int(value)

    def job_of(self, rule: str, wildcards: Mapping[str, Any]) -> int:
        """The index of the job of ``rule`` whose data id equals ``wildcards``.

        Raises
        ------
        KeyError
            If the campaign has no such job.
        """
        table = self._lookup.get(rule)
        if table is None:
            jobs = self.jobs(rule)
            table = {
                tuple(str(v) for v in self.data_id(rule, j).values()): j for j in range(jobs.n_jobs)
            }
            self._lookup[rule] = table
        key = tuple(str(wildcards[k]) for k in self.stage(rule).keys)
        try:
            return table[key]
        except KeyError:
            raise KeyError(
                f"{rule}: no job with data id {dict(zip(self.stage(rule).keys, key, strict=True))}"
            ) from None

    def fan_out(self, rule: str, dataset: str) -> tuple[str, ...]:
        """Keys of a dataset's template that one job spans (``ccd``: every science CCD)."""
        keys = self.stage(rule).keys
        fields = self.index.layout.fields(dataset)
        extra = tuple(f for f in fields if f not in keys and f != "instrument")
        if extra not in ((), ("ccd",)):
            raise ValueError(f"{dataset}: template keys {extra} are neither job keys nor ccd")
        return extra

    def output_patterns(self, rule: str) -> dict[str, list[str] | str]:
        """The rule's named output patterns (``{wildcard}`` left open, fan-out filled)."""
        layout = self.index.layout
        out: dict[str, list[str] | str] = {}
        for item in self.stage(rule).outputs:
            fixed = {"instrument": self.index.instrument}
            if self.fan_out(rule, item.dataset):
                out[item.name] = [
                    layout.pattern(item.dataset, ccd=int(c), **fixed) for c in self.index.ccds
                ]
            else:
                out[item.name] = layout.pattern(item.dataset, **fixed)
        return out

    def output_paths(self, rule: str, dataset: str, job: int) -> list[str]:
        """The files of one output dataset of one job."""
        data_id = {**self.data_id(rule, job), "instrument": self.index.instrument}
        path = self.index.layout.path
        if self.fan_out(rule, dataset):
            return [path(dataset, **{**data_id, "ccd": int(c)}) for c in self.index.ccds]
        return [path(dataset, **data_id)]

    def single(self, item: Input) -> bool:
        """Whether an input is one file per job (a path, not a list, in the rule)."""
        producer = self.producer.get(item.dataset)
        if producer is None:
            if item.dataset == "raw":  # one sensor exposure: a file; other raws: lists
                return item.obstype in SENSOR_OBSTYPES and "exposure" in item.match
            return not item.fan_out
        return (
            item.relation == "match"
            and set(producer.keys) <= set(item.match)
            and not self.fan_out(producer.rule, item.dataset)
        )

    def input_paths(self, rule: str, job: int) -> dict[str, list[str] | str]:
        """Every input of one job, by name (upstream products and external files).

        An input that is one file per job (`single`) is a path, the others lists.
        """
        return {
            name: paths[0] if len(paths) == 1 and self.single(item) else paths
            for (name, paths), item in zip(
                self._input_lists(rule, job).items(), self.stage(rule).inputs, strict=True
            )
        }

    def _input_lists(self, rule: str, job: int) -> dict[str, list[str]]:
        s = self.stage(rule)
        out: dict[str, list[str]] = {}
        upstream = {item.name: producer for item, producer in self.upstream_inputs(s)}
        for item in s.inputs:
            producer = upstream.get(item.name)
            if not self.holds(item.when):
                out[item.name] = []  # not read in this campaign (an SDSS frame's fpM, say)
            elif producer is not None:
                jobs = self.relation(rule, item).upstream_of(job)
                out[item.name] = [
                    p
                    for u in jobs.tolist()
                    for p in self.output_paths(producer.rule, item.dataset, u)
                ]
            elif item.dataset in self.producer:
                out[item.name] = []  # produced by an inactive stage: nothing to read
            else:
                out[item.name] = self.external_paths(rule, item, job)
        return out

    def external_paths(self, rule: str, item: Input, job: int) -> list[str]:
        """Files of an input no stage produces: raws from the registry, others from the layout.

        Raises
        ------
        KeyError
            If a science visit lacks a raw for one of the campaign's CCDs.
        """
        data_id = self.data_id(rule, job, attributes=True)
        if item.dataset == "raw":
            return self._raw_paths(item, data_id)
        values = {**data_id, "instrument": self.index.instrument}
        if item.fan_out:
            return [
                self._external_path(item.dataset, {**values, "ccd": int(c)})
                for c in self.index.ccds
            ]
        return [self._external_path(item.dataset, values)]

    def _external_path(self, dataset: str, values: Mapping[str, Any]) -> str:
        """One external input: a companion of the job's raw matched at ingest, else the layout's.

        A companion (an SDSS frame's fpM, psField, tsField) that ingest matched to the raw by
        its headers is read from the registry; otherwise the layout's template is filled from
        the job's data id and the raw's full data id (run, field... when ingested through the
        camera description).
        """
        if dataset in CAMERA_DATASETS and "visit" in values and "ccd" in values:
            raw = self.registry.raw_paths(int(values["visit"])).get(int(values["ccd"]))
            if raw is not None:
                kind = self.companion_kinds.get(dataset)
                found = self.registry.companions(raw).get(kind) if kind else None
                if found:
                    return found
                described = self.registry.described_data_id(raw)
                values = {**described, **values}
        return self.index.layout.path(dataset, **values)

    @property
    def companion_kinds(self) -> dict[str, str]:
        """Dataset type -> companion kind of the campaign's camera description."""
        kinds = self.__dict__.get("_companion_kinds")
        if kinds is None:
            try:
                camera = load_camera(self.index.instrument)
                kinds = {
                    spec["dataset"]: kind
                    for kind, spec in camera.companions.items()
                    if "dataset" in spec
                }
            except FileNotFoundError:
                kinds = {}
            self.__dict__["_companion_kinds"] = kinds
        return kinds

    def _raw_paths(self, item: Input, data_id: Mapping[str, Any]) -> list[str]:
        registry = self.registry
        if item.obstype == "object":
            paths = registry.raw_paths(int(data_id["visit"]))
            ccds = [int(c) for c in self.index.ccds]
            missing = [c for c in ccds if c not in paths]
            if missing:
                raise KeyError(
                    f"visit {data_id['visit']} has no raw for ccd(s) {missing} in {registry.path}"
                )
            return [paths[c] for c in ccds]
        if item.obstype in SENSOR_OBSTYPES:
            exposure = data_id.get("exposure")
            return registry.sensor_paths(
                item.obstype, int(data_id["ccd"]), None if exposure is None else int(exposure)
            )
        return registry.calib_paths(item.obstype, int(data_id["ccd"]), data_id.get("filter"))

    @property
    def registry(self):
        """The registry, opened on first use (per-job raw lookups)."""
        from dcflow.campaign.registry import Registry

        registry = self.__dict__.get("_registry")
        if registry is None:
            registry = self.__dict__["_registry"] = Registry(self.index.registry_path)
        return registry

    # --- targets and the reference job list ----------------------------------------------------

    def targets(self) -> list[str]:
        """What rule ``all`` asks for: every target output of every active stage's jobs."""
        out: list[str] = []
        for s in self.stages:
            for item in s.outputs:
                if item.target:
                    n = self.jobs(s.rule).n_jobs
                    out += [p for j in range(n) for p in self.output_paths(s.rule, item.dataset, j)]
        return out

    def verdict_outputs(
        self, config: Mapping[str, Any]
    ) -> list[tuple[str, dict[str, Any], str, str]]:
        """``(rule, data id, path, header keyword)`` of every output that carries a verdict.

        Only stages that run their built-in payload: a placeholder (noop payload) or a site
        command's output holds no verdict dcflow can read. Few jobs at any scale (one per
        sensor or sensor exposure), so one tuple per output file.
        """
        out = []
        for s in self.stages:
            if payload_script(config, s.script, s.rule) != s.script:
                continue
            for item in s.outputs:
                if not item.verdict:
                    continue
                for j in range(self.jobs(s.rule).n_jobs):
                    data_id = self.data_id(s.rule, j)
                    for path in self.output_paths(s.rule, item.dataset, j):
                        out.append((s.rule, data_id, path, item.verdict))
        return out

    def job_filter_tract(self, rule: str, job: int) -> tuple[str | None, int | None]:
        """The filter and tract of one job's data (None where it has none)."""
        columns = self.jobs(rule).columns
        band = columns.get("filter")
        tract = columns.get("tract")
        return (
            self.index.filters[int(band[job])] if band is not None else None,
            int(tract[job]) if tract is not None else None,
        )

    def group_keys(self, rule: str) -> tuple[np.ndarray, list[tuple[str | None, int | None]]]:
        """One filter x tract group number per job of a stage, and each number's label.

        Labels are ``(filter, tract)`` (None where the stage has no such axis), in tract then
        filter order; some groups may hold no job. What `group_counts` bins, and what a watcher
        that keeps counts per group (``dcflow serve``) adds its changes to.
        """
        jobs = self.jobs(rule)
        band = jobs.columns.get("filter")
        tract = jobs.columns.get("tract")
        n_bands = max(len(self.index.filters), 1)
        b = band if band is not None else np.zeros(jobs.n_jobs, dtype=np.int64)
        if tract is not None and jobs.n_jobs:  # tract ids are small non-negative integers
            tracts = np.arange(int(tract.max()) + 1, dtype=np.int64)
            t = tract
        else:
            tracts, t = np.zeros(1, dtype=np.int64), np.zeros(jobs.n_jobs, dtype=np.int64)
        key = t.astype(np.int64) * n_bands + b
        labels = [
            (
                self.index.filters[k % n_bands] if band is not None else None,
                int(tracts[k // n_bands]) if tract is not None else None,
            )
            for k in range(len(tracts) * n_bands)
        ]
        return key, labels

    def group_counts(
        self, rule: str, masks: Mapping[str, np.ndarray]
    ) -> list[tuple[str | None, int | None, int, dict[str, int]]]:
        """Jobs of one stage per filter x tract: ``(filter, tract, total, {mask: count})``.

        Groups without jobs are left out; the order is tract, then filter. What plan and status
        rows are made of, with one `numpy.bincount` per mask (no object per job).
        """
        if self.jobs(rule).n_jobs == 0:
            return []
        key, labels = self.group_keys(rule)
        size = len(labels)
        totals = np.bincount(key, minlength=size)
        counts = {
            name: np.bincount(key[np.asarray(mask, dtype=bool)], minlength=size)
            for name, mask in masks.items()
        }
        return [
            (*labels[k], int(totals[k]), {name: int(c[k]) for name, c in counts.items()})
            for k in np.flatnonzero(totals).tolist()
        ]

    def job_specs(self) -> list[JobSpec]:
        """One `JobSpec` per job, rule ``all`` last (small campaigns only: one object per job).

        The reference planner's and the tests' view of the graph.
        """
        specs: list[JobSpec] = []
        for s in self.stages:
            for j in range(self.jobs(s.rule).n_jobs):
                outputs = [
                    p for item in s.outputs for p in self.output_paths(s.rule, item.dataset, j)
                ]
                inputs = [p for paths in self._input_lists(s.rule, j).values() for p in paths]
                band, tract = self.job_filter_tract(s.rule, j)
                specs.append(
                    JobSpec(
                        s.rule, self.data_id(s.rule, j), tuple(outputs), tuple(inputs), band, tract
                    )
                )
        specs.append(JobSpec(TARGET_RULE, {}, (), tuple(self.targets())))
        return specs

    # --- rule adapters (rules/common.smk) ------------------------------------------------------

    def filter_pattern(self) -> str:
        """A wildcard constraint matching exactly the campaign's filter names (a small set)."""
        names = sorted(self.index.filters, key=len, reverse=True)
        return "(?:" + "|".join(names) + ")" if names else "[a-z]+"

    def tile_pattern(self, rule: str) -> str:
        """The ``{tile}`` of a rule's log and benchmark: its wildcards, or ``campaign``."""
        keys = stage(rule).keys
        return "_".join(f"{k}={{{k}}}" for k in keys) if keys else "campaign"

    def report_labels(self, rule: str) -> dict[str, str]:
        """Labels of a rule's report items: its wildcards, or the stage name."""
        keys = stage(rule).keys
        return {k: f"{{{k}}}" for k in keys} if keys else {"stage": rule}

    def params(self, rule: str, config: Mapping[str, Any], *, command: str = "") -> dict:
        """A rule's params: the config sections it reads, per-job params, its site command."""
        s = stage(rule)
        out: dict[str, Any] = {name: config.get(name) or {} for name in s.sections}
        for name in s.job_params:
            if name == "instrument":
                out[name] = self.index.instrument
            elif name == "band":
                out[name] = self._band_of(rule)
            elif name == "campaign":
                out[name] = str(config.get("campaign", {}).get("name", ""))
            elif name == "catalog_db_path":
                out[name] = self.index.layout.path("catalog_db")
            elif name == "ccds":
                out[name] = [int(c) for c in self.index.ccds]
            elif name == "filters":
                out[name] = list(self.index.filters)
        if command:
            # a function, so that Snakemake does not expand the template's {output.x} itself
            out["command"] = lambda wildcards: command
        return out

    def _band_of(self, rule: str):
        def band(wildcards):
            return self.data_id(rule, self.job_of(rule, wildcards), attributes=True)["filter"]

        return band

    def final_targets(self, config: Mapping[str, Any]) -> list[str]:
        """What rule ``all`` asks for: a shard's targets in shard mode, else `targets`."""
        if config.get("shard"):
            from dcflow.campaign.manifest import read_manifest

            return list(read_manifest(config["shard"]).targets)
        return self.targets()

    # --- lookups by data id, closures ----------------------------------------------------------

    def find_jobs(self, rule: str, data_ids: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Job indices of data ids of one stage (-1 where the campaign has no such job).

        Vectorized: one sort of the stage's job keys, one search per call, never a Python
        object per job (a ledger of 10^6 attempts against a DC2013 campaign).
        """
        jobs = self.jobs(rule)
        sensors = jobs.stage.space in _SENSOR_SPACES
        values = {
            name: self._encode(name, [_key_value(name, d) for d in data_ids], sensors)
            for name in jobs.stage.keys
        }
        return self._match(rule, values, len(data_ids))

    def find_tiles(self, rule: str, tiles: Sequence[str]) -> np.ndarray:
        """Job indices of tile names (`dcflow.ledger.tile_of`) of one stage, -1 where none.

        The names are parsed by one regular expression over all of them at once (the ledger's
        succeeded attempts since a plan: up to millions); names it does not fit go through
        `dcflow.ledger.parse_tile` and `find_jobs`.
        """
        jobs = self.jobs(rule)
        keys = [k for k in DATA_ID_KEYS if k in jobs.stage.keys]
        if not keys or not tiles:
            return self.find_jobs(rule, [parse_tile(t) for t in tiles])
        fields = [r"patch=(\d+),(\d+)" if k == "patch" else rf"{k}=([^_\n]+)" for k in keys]
        found = re.findall("^" + "_".join(fields) + "$", "\n".join(tiles), flags=re.M)
        if len(found) != len(tiles):
            return self.find_jobs(rule, [parse_tile(t) for t in tiles])
        columns = np.array(found, dtype=str).reshape(len(tiles), -1)
        sensors = jobs.stage.space in _SENSOR_SPACES
        values: dict[str, np.ndarray] = {}
        column = 0
        for key in keys:
            if key == "patch":
                continue
            values[key] = self._encode_array(key, columns[:, column], sensors)
            column += 1
        if "patch" in keys:
            x, y = columns[:, column].astype(np.int64), columns[:, column + 1].astype(np.int64)
            values["patch"] = self._patch_of(values.get("tract"), x, y)
        return self._match(rule, values, len(tiles))

    def _match(self, rule: str, values: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """Jobs whose key columns equal the encoded ``values`` (-1: none)."""
        jobs = self.jobs(rule)
        keys = jobs.stage.keys
        if jobs.n_jobs == 0 or n == 0:
            return np.full(n, -1, dtype=np.int64)
        if not keys:
            return np.zeros(n, dtype=np.int64)
        query = np.zeros(n, dtype=np.int64)
        bad = np.zeros(n, dtype=bool)
        radices, order, ordered = self._sorted_keys(rule)
        for name, radix in zip(keys, radices, strict=True):
            encoded = values[name]
            bad |= (encoded < 0) | (encoded >= radix)
            query = query * radix + np.clip(encoded, 0, radix - 1)
        where = np.minimum(np.searchsorted(ordered, query), len(ordered) - 1)
        found = (ordered[where] == query) & ~bad
        return np.where(found, order[where], -1)

    def _sorted_keys(self, rule: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Per key its radix, and the jobs sorted by their combined key.

        Computed once per stage: a watcher such as ``dcflow serve`` looks up a few tiles many
        times, and the sort of millions of keys would cost it each time.
        """
        cached = self._key_order.get(rule)
        if cached is None:
            jobs = self.jobs(rule)
            radices = []
            job_key = np.zeros(jobs.n_jobs, dtype=np.int64)
            for name in jobs.stage.keys:
                column = jobs.columns[name]
                radix = max(int(column.max(initial=-1)) + 1, 1)
                radices.append(radix)
                job_key = job_key * radix + column
            order = np.argsort(job_key, kind="stable")
            cached = self._key_order[rule] = (radices, order, job_key[order])
        return cached

    def _encode_array(self, name: str, text: np.ndarray, sensors: bool) -> np.ndarray:
        """`_encode` of parsed text values: integers converted by numpy, filters by table."""
        if name in INT_KEYS:
            raw = np.char.isdigit(text)
            numbers = np.where(raw, text, "-1").astype(np.int64)
            if name == "visit" or (name == "ccd" and not sensors):
                table = self.index.visits if name == "visit" else self.index.ccds
                return _position(table, numbers)
            return numbers
        unique, inverse = np.unique(text, return_inverse=True)
        return self._encode(name, unique.tolist(), sensors)[inverse.reshape(-1)]

    def _patch_of(self, tract: np.ndarray | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Patch indices of ``(tract, x, y)`` (tract: an ``_encode``d value, kept as is)."""
        index = self.index
        n = index.skymap.n_patches if index.skymap is not None else 1
        tract = np.zeros(len(x), dtype=np.int64) if tract is None else tract
        keys = index.patch_keys()
        if len(keys) == 0:
            return np.full(len(x), -1, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        wanted = (tract * n + y) * n + x
        where = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
        ok = (keys[order][where] == wanted) & (x < n) & (y < n) & (tract >= 0)
        return np.where(ok, order[where], -1)

    def _encode(self, name: str, values: list[Any], sensors: bool) -> np.ndarray:
        """Data id values in the encoding of the job columns (-1: unknown)."""
        index = self.index

        def number(value: Any) -> int:
            try:
                return int(str(value))
            except (TypeError, ValueError):
                return -1

        if name == "filter":
            band_of = {b: i for i, b in enumerate(index.filters)}
            return np.array([band_of.get(str(v), -1) for v in values], dtype=np.int64)
        if name == "patch":
            # patch names repeat from tract to tract: a patch is its (tract, name)
            names = {
                (str(int(index.patch_tract[p])), index.patch_name(p)): p
                for p in range(index.n_patches)
            }
            return np.array([names.get(v, -1) for v in values], dtype=np.int64)
        raw = np.array([number(v) for v in values], dtype=np.int64)
        if name == "visit" or (name == "ccd" and not sensors):
            table = index.visits if name == "visit" else index.ccds
            if table.size == 0:
                return np.full(len(raw), -1, dtype=np.int64)
            where = np.minimum(np.searchsorted(table, raw), table.size - 1)
            return np.where(table[where] == raw, where, -1)
        return raw

    def downstream(
        self, seeds: Mapping[str, np.ndarray], allowed: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The seeds and every job downstream of them (restricted to ``allowed`` jobs).

        Parameters
        ----------
        seeds : mapping
            Per rule, one boolean per job.
        allowed : mapping, optional
            Per rule, which jobs may be added (a plan's jobs to run); seeds are kept as given.
        """
        selected = {
            s.rule: np.array(
                seeds.get(s.rule, np.zeros(self.jobs(s.rule).n_jobs, bool)), dtype=bool
            )
            for s in self.stages
        }
        edges = [
            (s.rule, producer.rule, self.relation(s.rule, item))
            for s in self.stages
            for item, producer in self.upstream_inputs(s)
        ]
        changed = True
        while changed:
            changed = False
            for down, up, relation in edges:
                reached = relation.downstream_any(selected[up], len(selected[down]))
                if allowed is not None and down in allowed:
                    reached &= np.asarray(allowed[down], dtype=bool)
                new = reached & ~selected[down]
                if new.any():
                    selected[down] |= new
                    changed = True
        return selected

    # --- whole-stage views (synthetic inventories, pictures) -----------------------------------

    def levels(self) -> dict[str, int]:
        """Per active stage: the length of its longest chain of upstream stages."""
        out: dict[str, int] = {}
        for s in self.stages:
            ups = [out[p.rule] for _, p in self.upstream_inputs(s) if p.rule in out]
            out[s.rule] = 1 + max(ups) if ups else 0
        return out

    def per_visit_closure(self) -> set[str]:
        """Per-visit stages fed only by per-visit stages and calibrations, and those calibrations.

        What a campaign half way through its visits has done (synthetic "half" inventories).
        """
        visit_keyed = {s.rule for s in self.stages if "visit" in s.keys}
        tainted: set[str] = set()  # stages with a per-visit stage upstream
        chosen: set[str] = set()
        for s in self.stages:
            producers = [p.rule for _, p in self.upstream_inputs(s)]
            if any(p in visit_keyed or p in tainted for p in producers):
                tainted.add(s.rule)
            if s.rule in visit_keyed and all(
                (p in chosen) or (p not in visit_keyed and p not in tainted) for p in producers
            ):
                chosen.add(s.rule)
        ancestors = set()
        todo = list(chosen)
        while todo:
            rule = todo.pop()
            for _, p in self.upstream_inputs(self.stage(rule)):
                if p.rule not in ancestors:
                    ancestors.add(p.rule)
                    todo.append(p.rule)
        return chosen | ancestors

    def path_batch(self, rule: str, dataset: str, jobs: np.ndarray) -> list[str]:
        """The files of one output dataset for many jobs (no per-job object)."""
        stage_jobs = self.jobs(rule)
        sensors = stage_jobs.stage.space in _SENSOR_SPACES
        pattern = self.index.layout.pattern(dataset, instrument=self.index.instrument)
        names = stage_jobs.stage.keys
        values = [self._values(name, stage_jobs.columns[name][jobs], sensors) for name in names]
        ccds = [int(c) for c in self.index.ccds] if self.fan_out(rule, dataset) else [None]
        out = []
        for row in zip(*values, strict=True) if values else [()] * len(jobs):
            fields = dict(zip(names, row, strict=True))
            for ccd in ccds:
                if ccd is not None:
                    fields["ccd"] = ccd
                out.append(pattern.format(**fields))
        return out

    def tile_batch(self, rule: str, jobs: np.ndarray) -> list[str]:
        """The tile names (`dcflow.ledger.tile_of`) of many jobs of one stage."""
        stage_jobs = self.jobs(rule)
        sensors = stage_jobs.stage.space in _SENSOR_SPACES
        names = [k for k in DATA_ID_KEYS if k in stage_jobs.stage.keys]
        if not names:
            return ["campaign"] * len(jobs)
        values = [self._values(name, stage_jobs.columns[name][jobs], sensors) for name in names]
        return [
            "_".join(f"{k}={v}" for k, v in zip(names, row, strict=True))
            for row in zip(*values, strict=True)
        ]

    def _values(self, name: str, column: np.ndarray, sensors: bool) -> list:
        index = self.index
        if name == "visit":
            return index.visits[column].tolist()
        if name == "filter":
            return [index.filters[b] for b in column.tolist()]
        if name == "patch":
            return [index.patch_name(p) for p in column.tolist()]
        if name == "ccd" and not sensors:
            return index.ccds[column].tolist()
        return column.tolist()


def _key_value(name: str, data_id: Mapping[str, Any]) -> Any:
    """A data id's value of one job key (a patch is named within its tract)."""
    if name == "patch":
        return (str(data_id.get("tract")), str(data_id.get("patch")))
    return data_id.get(name)


def _position(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in a sorted table (-1 where absent)."""
    if table.size == 0:
        return np.full(len(values), -1, dtype=np.int64)
    where = np.minimum(np.searchsorted(table, values), table.size - 1)
    return np.where(table[where] == values, where, -1)
