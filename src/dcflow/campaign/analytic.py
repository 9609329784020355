"""The analytic planner: Snakemake's dry run of a whole campaign, as array passes.

What exists is learnt once: either one guided walk of the output tree (``os.listdir`` of the
directories the layout templates name, file names only; on a small campaign also a stat per
file, for modification times), or a file list (one path per line, optionally followed by a
tab and its modification time; optionally gzipped: an inventory from a storage dump). Each
name is parsed against the layout templates into boolean "exists" arrays, one per output
dataset type, indexed by its stage's jobs (`dcflow.pipeline.graph`) and by CCD where one job
writes one file per CCD. Snakemake's incomplete markers (`dcflow.plan.incomplete_outputs`) are
parsed the same way.

The needrun rules are Snakemake's: a job runs if it produces a missing final target (rule
``all``'s inputs), an output marked incomplete, or an output older than one of its inputs
(when modification times are known); a job that runs makes every job downstream of it run,
and the jobs upstream of it whose files it needs are missing. Each stage is a boolean array
over its jobs and each edge of the pipeline spec a `dcflow.pipeline.graph.Relation` (gathers
and ``bincount``); the passes repeat until nothing changes. No stage or dependency is named
here: they all come from `dcflow.pipeline.spec`. A test compares this planner with the per-job
reference planner (`dcflow.plan.plan_jobs`) and both with ``snakemake -n`` on many campaign
shapes.
"""

from __future__ import annotations

import gzip
import os
import re
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from dcflow.campaign.index import CampaignIndex
from dcflow.ledger import tile_of
from dcflow.pipeline.graph import JobGraph
from dcflow.pipeline.spec import TARGET_RULE
from dcflow.plan import LazyMapping, Plan, StageCount, incomplete_outputs, runtime_estimates

__all__ = [
    "SMALL_CAMPAIGN_JOBS",
    "NeedRun",
    "OutputState",
    "needrun",
    "plan_index",
    "read_file_list",
    "scan_tree",
]

SMALL_CAMPAIGN_JOBS = 50_000
"""Up to this many jobs, a tree walk also stats every file (modification times, as Snakemake's
mtime trigger needs); above it, times come only from a file list that carries them."""

_INT = r"(?:0|[1-9][0-9]*)"
_MTIME = r"(?:\t(?P<mtime>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?))?"


def _graph(campaign: CampaignIndex | JobGraph) -> JobGraph:
    return campaign if isinstance(campaign, JobGraph) else JobGraph(campaign)


def _tracked(graph: JobGraph) -> dict[str, tuple[str, int]]:
    """Output dataset type -> (producing rule, files per job) of every active stage."""
    n_ccds = len(graph.index.ccds)
    out = {}
    for s in graph.stages:
        for item in s.outputs:
            fan = n_ccds if graph.fan_out(s.rule, item.dataset) else 1
            out[item.dataset] = (s.rule, fan)
    return out


@dataclass(slots=True)
class OutputState:
    """Which outputs of a campaign exist (or are marked incomplete), as boolean arrays.

    Attributes
    ----------
    arrays : dict of numpy.ndarray
        Per output dataset type: ``(n_jobs, n_files_per_job)`` booleans, jobs as in
        `dcflow.pipeline.graph.JobGraph.jobs` of the producing stage, files per CCD where one
        job writes one per science CCD.
    mtimes : dict of numpy.ndarray or None
        Modification times (NaN: missing or unknown) in the same shapes, when known.
    n_files : int
        Names read (files listed, or lines of the file list).
    """

    arrays: dict[str, np.ndarray]
    mtimes: dict[str, np.ndarray] | None
    n_files: int


def _empty_state(graph: JobGraph) -> OutputState:
    arrays = {
        dataset: np.zeros((graph.jobs(rule).n_jobs, fan), dtype=bool)
        for dataset, (rule, fan) in _tracked(graph).items()
    }
    return OutputState(arrays, None, 0)


class _Locator:
    """Turns parsed data id columns into flat indices of the `OutputState` arrays."""

    def __init__(self, graph: JobGraph) -> None:
        self.graph = graph
        index = graph.index
        self.index = index
        self.tracked = _tracked(graph)
        self.band_of = {band: i for i, band in enumerate(index.filters)}
        ccds = index.ccds
        self.ccd_lookup = np.full(int(ccds.max()) + 2 if ccds.size else 1, -1, dtype=np.int64)
        self.ccd_lookup[ccds] = np.arange(ccds.size)
        self.n_side = index.skymap.n_patches if index.skymap is not None else 1
        keys = index.patch_keys()
        self.patch_order = np.argsort(keys, kind="stable")
        self.patch_keys_sorted = keys[self.patch_order]
        self._job_keys: dict[str, tuple[list[int], np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _lookup(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        if sorted_keys.size == 0:
            return np.full(values.shape, -1, dtype=np.int64)
        where = np.minimum(np.searchsorted(sorted_keys, values), sorted_keys.size - 1)
        return np.where(sorted_keys[where] == values, where, -1)

    def _ccd(self, values: np.ndarray) -> np.ndarray:
        ok = (values >= 0) & (values < self.ccd_lookup.size)
        return np.where(ok, self.ccd_lookup[np.where(ok, values, 0)], -1)

    def _patch(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        n = self.n_side
        x, y, tract = columns["patch_x"], columns["patch_y"], columns["tract"]
        ok = (x < n) & (y < n)
        found = self._lookup(self.patch_keys_sorted, (tract * n + y) * n + x)
        return np.where(ok & (found >= 0), self.patch_order[np.maximum(found, 0)], -1)

    def _dense(self, name: str, columns: Mapping[str, np.ndarray], sensors: bool) -> np.ndarray:
        """A parsed column in the encoding of `JobGraph` columns (-1: not of this campaign)."""
        if name == "visit":
            return self._lookup(self.index.visits, columns["visit"])
        if name == "ccd":
            return columns["ccd"] if sensors else self._ccd(columns["ccd"])
        if name == "patch":
            return self._patch(columns)
        return columns[name]

    def _keys(self, rule: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        found = self._job_keys.get(rule)
        if found is None:
            jobs = self.graph.jobs(rule)
            radices: list[int] = []
            key = np.zeros(jobs.n_jobs, dtype=np.int64)
            for name in jobs.stage.keys:
                radix = int(jobs.columns[name].max(initial=-1)) + 1
                radices.append(max(radix, 1))
                key = key * radices[-1] + jobs.columns[name]
            order = np.argsort(key, kind="stable")
            found = self._job_keys[rule] = (radices, key[order], order)
        return found

    def flat_index(self, dataset: str, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Flat indices into the dataset's array (``-1``: not an output of this campaign)."""
        rule, fan = self.tracked[dataset]
        jobs = self.graph.jobs(rule)
        n = len(next(iter(columns.values()))) if columns else 1
        sensors = jobs.stage.space in ("sensor", "sensor_exposure", "ptc_sensor")
        radices, sorted_keys, order = self._keys(rule)
        key = np.zeros(n, dtype=np.int64)
        bad = np.zeros(n, dtype=bool)
        for name, radix in zip(jobs.stage.keys, radices, strict=True):
            values = self._dense(name, columns, sensors)
            bad |= (values < 0) | (values >= radix)
            key = key * radix + np.clip(values, 0, radix - 1)
        found = self._lookup(sorted_keys, key)
        job = np.where(found >= 0, order[np.maximum(found, 0)], -1)
        bad |= job < 0
        if fan > 1:
            ccd = self._ccd(columns["ccd"])
            bad |= ccd < 0
            job = job * fan + np.maximum(ccd, 0)
        return np.where(bad, -1, job)


def _field_regex(name: str, filters: tuple[str, ...], seen: set[str]) -> str:
    """Regex of one template field (a back-reference when the field appeared before)."""
    if name in seen:
        return "(?P=patch_x),(?P=patch_y)" if name == "patch" else f"(?P={name})"
    seen.add(name)
    if name == "patch":
        return f"(?P<patch_x>{_INT}),(?P<patch_y>{_INT})"
    if name == "filter":
        choices = "|".join(re.escape(f) for f in sorted(filters, key=len, reverse=True))
        return f"(?P<filter>{choices or '[^/]+'})"
    return f"(?P<{name}>{_INT})"


def _template_regex(template: str, filters: tuple[str, ...]) -> str:
    seen: set[str] = set()
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if name:
            out.append(_field_regex(name, filters, seen))
    return "".join(out)


class _Accumulator:
    """Parsed data id columns per dataset type, as arrays (filters as band indices)."""

    def __init__(self, band_of: Mapping[str, int]) -> None:
        self.columns: dict[str, dict[str, list[np.ndarray]]] = {}
        self.band_of = band_of

    def add(self, dataset: str, matches: list, names: tuple[str, ...]) -> None:
        """Add regex matches: tuples of group texts in ``names`` order (or texts, one group)."""
        if not matches:
            return
        cols = self.columns.setdefault(dataset, {})
        single = not isinstance(matches[0], tuple)
        n = len(matches)
        for k, name in enumerate(names):
            values = matches if single else [m[k] for m in matches]
            if name == "filter":
                band_of = self.band_of
                found = (band_of.get(v, -1) for v in values)
                array = np.fromiter(found, dtype=np.int64, count=n)
            elif name == "mtime":
                array = np.fromiter((float(v) if v else np.nan for v in values), float, count=n)
            else:
                array = np.fromiter(map(int, values), dtype=np.int64, count=n)
            cols.setdefault(name, []).append(array)
        if "mtime" not in names and "mtime" in cols:
            cols["mtime"].append(np.full(n, np.nan))

    def add_one(self, dataset: str, values: dict[str, str]) -> None:
        names = tuple(values)
        self.add(dataset, [tuple(values[n] for n in names)], names)


def _apply(state: OutputState, acc: _Accumulator, locator: _Locator) -> None:
    for dataset, cols in acc.columns.items():
        columns = {name: np.concatenate(parts) for name, parts in cols.items()}
        mtime = columns.pop("mtime", None)
        flat = locator.flat_index(dataset, columns)
        ok = flat >= 0
        state.arrays[dataset].reshape(-1)[flat[ok]] = True
        if mtime is not None and len(mtime) == len(flat) and np.isfinite(mtime).any():
            if state.mtimes is None:
                state.mtimes = {d: np.full(a.shape, np.nan) for d, a in state.arrays.items()}
            state.mtimes[dataset].reshape(-1)[flat[ok]] = mtime[ok]


def _rooted_templates(graph: JobGraph) -> dict[str, str]:
    layout = graph.index.layout
    return {name: layout.pattern(name) for name in _tracked(graph)}


def scan_tree(
    campaign: CampaignIndex | JobGraph,
    *,
    workdir: str | os.PathLike = ".",
    mtimes: bool | None = None,
) -> OutputState:
    """What exists, from one guided walk of the output tree (names only, no stat per file).

    Only the directories that the tracked templates name are listed: for
    ``calexp/{visit}/calexp_{visit}_{ccd}.fits``, ``calexp/`` and each ``calexp/<visit>/``.
    Each directory's names are parsed in one regex pass.

    Parameters
    ----------
    campaign : CampaignIndex or JobGraph
        The campaign (its layout gives the templates).
    workdir : path-like
        Directory that relative layout roots are relative to.
    mtimes : bool, optional
        Also stat each file for its modification time (default: on campaigns of at most
        `SMALL_CAMPAIGN_JOBS` jobs).
    """
    graph = _graph(campaign)
    workdir = os.path.abspath(workdir)
    if mtimes is None:
        mtimes = _n_jobs(graph) <= SMALL_CAMPAIGN_JOBS
    state = _empty_state(graph)
    locator = _Locator(graph)
    acc = _Accumulator(locator.band_of)
    filters = graph.index.filters
    for dataset, pattern in _rooted_templates(graph).items():
        full = os.path.normpath(os.path.join(workdir, pattern))
        segments = full.split(os.sep)
        # the longest literal prefix is the starting directory
        k = 0
        while k < len(segments) - 1 and "{" not in segments[k]:
            k += 1
        start = os.sep.join(segments[:k]) or os.sep
        rest = segments[k:]
        state.n_files += _walk(start, rest, filters, dataset, acc, {}, mtimes)
    _apply(state, acc, locator)
    if mtimes and state.mtimes is None:
        state.mtimes = {d: np.full(a.shape, np.nan) for d, a in state.arrays.items()}
    return state


def _n_jobs(graph: JobGraph) -> int:
    return sum(graph.jobs(s.rule).n_jobs for s in graph.stages)


def _walk(
    directory: str,
    segments: list[str],
    filters: tuple[str, ...],
    dataset: str,
    acc: _Accumulator,
    captured: dict[str, str],
    mtimes: bool = False,
) -> int:
    segment = segments[0]
    last = len(segments) == 1
    fields = [n for _, n, _, _ in string.Formatter().parse(segment) if n]
    if not fields:
        path = os.path.join(directory, segment)
        if last:
            if os.path.isfile(path):
                values = dict(captured)
                if mtimes:
                    values["mtime"] = repr(os.stat(path).st_mtime)
                acc.add_one(dataset, values)
                return 1
            return 0
        return _walk(path, segments[1:], filters, dataset, acc, captured, mtimes)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    regex = re.compile(_template_regex(segment, filters))
    if not last:
        found = 0
        for name in names:
            match = regex.fullmatch(name)
            if match is None:
                continue
            values = {k: v for k, v in match.groupdict().items() if v is not None}
            if any(captured.get(k, v) != v for k, v in values.items()):
                continue
            found += _walk(
                os.path.join(directory, name),
                segments[1:],
                filters,
                dataset,
                acc,
                {**captured, **values},
                mtimes,
            )
        return found
    if mtimes:
        return _walk_stat(directory, names, regex, dataset, acc, captured)
    multi = re.compile("^" + regex.pattern + "$", re.MULTILINE)
    group_names = tuple(sorted(multi.groupindex, key=multi.groupindex.get))
    matches = multi.findall("\n".join(names))
    if matches and len(group_names) == 1:
        matches = [(m,) for m in matches]
    checks = [(group_names.index(k), v) for k, v in captured.items() if k in group_names]
    if checks:
        matches = [m for m in matches if all(m[i] == v for i, v in checks)]
    extra = [k for k in captured if k not in group_names]
    if extra:
        tail = tuple(captured[k] for k in extra)
        matches = [(*m, *tail) for m in matches]
    acc.add(dataset, matches, (*group_names, *extra))
    return len(names)


def _walk_stat(
    directory: str,
    names: list[str],
    regex: re.Pattern,
    dataset: str,
    acc: _Accumulator,
    captured: dict[str, str],
) -> int:
    """The last level of a walk with a stat per matched file (small campaigns: mtimes)."""
    rows: list[tuple[str, ...]] = []
    group_names = tuple(sorted(regex.groupindex, key=regex.groupindex.get))
    extra = [k for k in captured if k not in group_names]
    for name in names:
        match = regex.fullmatch(name)
        if match is None:
            continue
        values = match.groupdict()
        if any(values.get(k, v) != v for k, v in captured.items() if k in values):
            continue
        try:
            mtime = os.stat(os.path.join(directory, name)).st_mtime
        except FileNotFoundError:
            continue
        rows.append((*(values[k] for k in group_names), *(captured[k] for k in extra), repr(mtime)))
    acc.add(dataset, rows, (*group_names, *extra, "mtime"))
    return len(names)


def _open_text(path: str | os.PathLike):
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def read_file_list(
    campaign: CampaignIndex | JobGraph,
    lines: str | os.PathLike | Iterable[str],
    *,
    workdir: str | os.PathLike = ".",
    chunk_bytes: int = 1 << 26,
) -> OutputState:
    """What exists, from a file list: one path per line (absolute or relative to ``workdir``).

    A line may carry the file's modification time after a tab (``path<TAB>mtime``, seconds
    since the epoch): then the plan applies Snakemake's mtime trigger too.

    Parameters
    ----------
    campaign : CampaignIndex or JobGraph
        The campaign.
    lines : path-like or iterable of str
        A file (gzipped if its name ends in ``.gz``) or the paths themselves.
    workdir : path-like
        Directory that relative paths (and relative layout roots) are relative to.
    chunk_bytes : int
        Read about this much text at a time. A chunk whose lines all start with the absolute
        output root is parsed by one regex pass per template over the whole chunk (no Python
        work per line); other chunks are normalized line by line first.
    """
    graph = _graph(campaign)
    workdir = os.path.abspath(workdir)
    state = _empty_state(graph)
    locator = _Locator(graph)
    acc = _Accumulator(locator.band_of)
    layout = graph.index.layout
    out_root = os.path.normpath(os.path.join(workdir, layout.output_root))
    in_root = os.path.normpath(os.path.join(workdir, layout.input_root))
    head = out_root + os.sep
    absolute: list[tuple[str, re.Pattern, tuple[str, ...]]] = []
    relative: dict[str, list[tuple[str, re.Pattern, tuple[str, ...]]]] = {}
    filters = graph.index.filters
    for dataset, pattern in _rooted_templates(graph).items():
        full = os.path.normpath(os.path.join(workdir, pattern))
        root = out_root if full.startswith(head) else in_root
        rel = os.path.relpath(full, root)
        body = _template_regex(rel, filters) + _MTIME + "(?=\n)"
        regex = re.compile(re.escape("\n" + root + os.sep) + body)
        absolute.append((dataset, regex, tuple(sorted(regex.groupindex, key=regex.groupindex.get))))
        regex = re.compile("\n" + body)
        names = tuple(sorted(regex.groupindex, key=regex.groupindex.get))
        relative.setdefault(root + os.sep, []).append((dataset, regex, names))

    def parse(text: str, regexes: list[tuple[str, re.Pattern, tuple[str, ...]]]) -> None:
        for dataset, regex, names in regexes:
            matches = regex.findall(text)
            if matches:
                acc.add(dataset, matches, names)

    def consume(text: str) -> int:
        """Parse a block of whole lines; returns the number of lines."""
        if not text.endswith("\n"):
            text += "\n"
        n_lines = text.count("\n")
        text = "\n" + text
        if text.count("\n" + head) == n_lines:
            parse(text, absolute)
            return n_lines
        rels: dict[str, list[str]] = {root: [] for root in relative}
        for line in text[1:-1].split("\n"):
            path, tab, mtime = line.partition("\t")
            full = os.path.normpath(os.path.join(workdir, path))
            for root, found in rels.items():
                if full.startswith(root):
                    found.append(full[len(root) :] + tab + mtime)
        for root, found in rels.items():
            if found:
                parse("\n" + "\n".join(found) + "\n", relative[root])
        return n_lines

    n = 0
    if isinstance(lines, (str, os.PathLike)):
        with _open_text(lines) as handle:
            while True:
                text = handle.read(chunk_bytes)
                if not text:
                    break
                if not text.endswith("\n"):
                    text += handle.readline()
                n += consume(text)
    else:
        batch: list[str] = []
        for line in lines:
            batch.append(line.rstrip("\n"))
            if len(batch) >= 200_000:
                n += consume("\n".join(batch))
                batch = []
        if batch:
            n += consume("\n".join(batch))
    state.n_files = n
    _apply(state, acc, locator)
    return state


@dataclass(frozen=True, slots=True)
class NeedRun:
    """Which jobs must run, per rule, as boolean arrays over `JobGraph.jobs` of each stage.

    Attributes
    ----------
    jobs : dict of numpy.ndarray
        Per active stage: one boolean per job.
    all : bool
        Whether the target rule runs (something is missing).
    passes : int
        Fixed-point passes made.
    """

    jobs: dict[str, np.ndarray]
    all: bool
    passes: int

    def __getattr__(self, rule: str) -> np.ndarray:
        try:
            return self.jobs[rule]
        except KeyError:
            raise AttributeError(rule) from None


def _seed(exists: OutputState, incomplete: OutputState | None, name: str) -> np.ndarray:
    """Per job: an output file that is both present and marked incomplete (the job reruns)."""
    if incomplete is None:
        return np.zeros(exists.arrays[name].shape[0], dtype=bool)
    return (exists.arrays[name] & incomplete.arrays[name]).any(axis=1)


def _newest(values: np.ndarray) -> np.ndarray:
    """Per job: the newest file time of a ``(n_jobs, n_files)`` array (-inf: none known)."""
    if values.shape[1] == 0:
        return np.full(values.shape[0], -np.inf)
    return np.nan_to_num(
        np.nanmax(np.where(np.isnan(values), -np.inf, values), axis=1), nan=-np.inf
    )


def _oldest(values: np.ndarray) -> np.ndarray:
    """Per job: the oldest existing file time (+inf: none known)."""
    if values.shape[1] == 0:  # fanned out over no science CCD (a sensor-test campaign)
        return np.full(values.shape[0], np.inf)
    return np.min(np.where(np.isnan(values), np.inf, values), axis=1)


def _outdated(
    graph: JobGraph, exists: OutputState, external_mtimes: Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """Per stage: jobs with an input newer than their oldest output (Snakemake's mtime rule)."""
    mtimes = exists.mtimes
    out: dict[str, np.ndarray] = {}
    for s in graph.stages:
        n = graph.jobs(s.rule).n_jobs
        oldest = np.full(n, np.inf)
        for item in s.outputs:
            oldest = np.minimum(oldest, _oldest(mtimes[item.dataset]))
        newest = np.full(n, -np.inf)
        for item, _ in graph.upstream_inputs(s):
            relation = graph.relation(s.rule, item)
            per_up = _newest(mtimes[item.dataset])
            newest = np.maximum(newest, relation.downstream_max(per_up, n))
        if external_mtimes and s.rule in external_mtimes:
            newest = np.maximum(newest, external_mtimes[s.rule])
        out[s.rule] = newest > oldest
    return out


def external_input_mtimes(graph: JobGraph) -> dict[str, np.ndarray]:
    """Per stage: the newest modification time of each job's raw and other external inputs.

    One stat per file: for small campaigns only (`SMALL_CAMPAIGN_JOBS`).
    """
    out: dict[str, np.ndarray] = {}
    seen: dict[str, float] = {}

    def mtime(path: str) -> float:
        if path not in seen:
            try:
                seen[path] = os.stat(path).st_mtime
            except OSError:
                seen[path] = -np.inf
        return seen[path]

    for s in graph.stages:
        upstream = {item.name for item, _ in graph.upstream_inputs(s)}
        external = [
            i for i in graph.inputs(s) if i.name not in upstream and i.dataset not in graph.producer
        ]
        if not external:
            continue
        n = graph.jobs(s.rule).n_jobs
        newest = np.full(n, -np.inf)
        for j in range(n):
            for item in external:
                for path in graph.external_paths(s.rule, item, j):
                    newest[j] = max(newest[j], mtime(path))
        out[s.rule] = newest
    return out


def needrun(
    campaign: CampaignIndex | JobGraph,
    exists: OutputState,
    incomplete: OutputState | None = None,
    *,
    external_mtimes: Mapping[str, np.ndarray] | None = None,
    workdir: str | os.PathLike = ".",
) -> NeedRun:
    """Apply Snakemake's needrun rules to the whole campaign (see the module docstring)."""
    graph = _graph(campaign)
    need: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for s in graph.stages:
        seed = np.zeros(graph.jobs(s.rule).n_jobs, dtype=bool)
        for item in s.outputs:
            ok = exists.arrays[item.dataset].all(axis=1)
            present[item.dataset] = ok
            if item.target:
                seed |= ~ok
            seed |= _seed(exists, incomplete, item.dataset)
        need[s.rule] = seed
    if exists.mtimes is not None:
        for rule, outdated in _outdated(graph, exists, external_mtimes).items():
            need[rule] |= outdated
    edges = [
        (s.rule, producer.rule, item.dataset, graph.relation(s.rule, item))
        for s in graph.stages
        for item, producer in graph.upstream_inputs(s)
    ]
    size = {s.rule: graph.jobs(s.rule).n_jobs for s in graph.stages}

    def total() -> int:
        return int(sum(int(flags.sum()) for flags in need.values()))

    passes = 0
    before = -1
    while True:
        now = total()
        if now == before:
            break
        before = now
        passes += 1
        for down, up, _, relation in edges:
            # downstream: a job that runs makes every job using its outputs run
            need[down] |= relation.downstream_any(need[up], size[down])
        for down, up, dataset, relation in edges:
            # upstream: the files a running job needs that are missing make their producer run
            need[up] |= relation.upstream_any(need[down], size[up]) & ~present[dataset]
    return NeedRun(jobs=need, all=bool(total()), passes=passes)


def _to_run_builder(graph: JobGraph, need: NeedRun) -> Callable[[], dict]:
    def build() -> dict:
        out: dict[tuple[str, str], tuple[str | None, int | None]] = {}
        for s in graph.stages:
            for j in np.flatnonzero(need.jobs[s.rule]).tolist():
                key = (s.rule, tile_of(graph.data_id(s.rule, j)))
                out[key] = graph.job_filter_tract(s.rule, j)
        if need.all:
            out[(TARGET_RULE, tile_of({}))] = (None, None)
        return out

    return build


def plan_index(
    index: CampaignIndex,
    *,
    workdir: str | os.PathLike = ".",
    inventory: str | os.PathLike | None = None,
    mtimes: bool | None = None,
    mean_runtimes_s: Mapping[str, tuple[float, int]] | None = None,
    default_runtimes_min: Mapping[str, float] | None = None,
    fallback_runtime_min: float = 30.0,
    start_time: float | None = None,
) -> Plan:
    """The campaign's dry-run plan: counts per stage x filter x tract, from arrays.

    Parameters
    ----------
    index : CampaignIndex
        The campaign.
    workdir : path-like
        Snakemake's working directory (relative roots, ``.snakemake/incomplete``).
    inventory : path-like, optional
        A file list (one path per line, optionally ``<TAB>mtime``; ``.gz`` allowed) instead of
        walking the output tree.
    mtimes : bool, optional
        Whether a tree walk stats files for modification times (default: small campaigns).
    mean_runtimes_s, default_runtimes_min, fallback_runtime_min
        CPU estimates, as `dcflow.plan.runtime_estimates`.
    start_time : float, optional
        ``time.perf_counter()`` when planning started (the plan's ``seconds`` then include
        building the index).

    Returns
    -------
    Plan
        Rows in workflow order; ``to_run`` is a `dcflow.plan.LazyMapping` (built on first use)
        and ``need`` the per-stage arrays.
    """
    start = time.perf_counter() if start_time is None else start_time
    workdir = os.path.abspath(workdir)
    graph = JobGraph(index)
    if inventory is None:
        exists = scan_tree(graph, workdir=workdir, mtimes=mtimes)
    else:
        exists = read_file_list(graph, inventory, workdir=workdir)
    external = external_input_mtimes(graph) if inventory is None and exists.mtimes else None
    marked = incomplete_outputs(workdir)
    incomplete = read_file_list(graph, sorted(marked), workdir=workdir) if marked else None
    need = needrun(graph, exists, incomplete, external_mtimes=external)
    counts = []
    for s in graph.stages:
        counts += [
            (s.rule, band, tract, total, n["to_run"])
            for band, tract, total, n in graph.group_counts(s.rule, {"to_run": need.jobs[s.rule]})
        ]
    counts.append((TARGET_RULE, None, None, 1, int(need.all)))
    per_job_h, source = runtime_estimates(
        dict.fromkeys(row[0] for row in counts),
        mean_runtimes_s=mean_runtimes_s,
        default_runtimes_min=default_runtimes_min,
        fallback_runtime_min=fallback_runtime_min,
    )
    rows = tuple(
        StageCount(rule, b, t, total, total - n_run, n_run, n_run * per_job_h[rule])
        for rule, b, t, total, n_run in counts
    )
    return Plan(
        rows=rows,
        to_run=LazyMapping(_to_run_builder(graph, need)),
        cpu_hours=sum(r.cpu_hours for r in rows),
        runtime_source=source,
        n_files=exists.n_files,
        seconds=time.perf_counter() - start,
        need=need.jobs,
    )
