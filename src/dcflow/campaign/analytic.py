"""The analytic planner: Snakemake's dry run of a whole campaign, as array passes.

What exists is learnt once: either one guided walk of the output tree (``os.listdir`` of the
directories the layout templates name, file names only, no stat per file), or a file list
(one path per line, optionally gzipped: an inventory from a storage dump). Each name is parsed
against the layout templates into boolean "exists" arrays indexed like `CampaignIndex`
(calexp ``[visit, ccd]``, warp ``[pair]``, deepCoadd ``[patch, filter]``...), without a set of
path strings. Snakemake's incomplete markers (`dcflow.plan.incomplete_outputs`) are parsed the
same way.

The needrun rules are those of `dcflow.plan` (and Snakemake's): a job runs if it produces a
missing final target (rule ``all``'s inputs) or an output marked incomplete; a job that runs
makes every job downstream of it run, and the jobs upstream of it whose files it needs are
missing. Here each rule is a boolean array over its jobs and each dependency a vectorized
pass (gathers and ``bincount``); passes repeat until nothing changes. The jobs mirror
`dcflow.targets.Campaign.jobs` (a test compares the two planners, and both with ``snakemake
-n``, on many campaign shapes); the Fe55 rules, a separate small graph, go through
`dcflow.plan.needrun_jobs`.
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
from dcflow.plan import (
    LazyMapping,
    Plan,
    StageCount,
    incomplete_outputs,
    needrun_jobs,
    runtime_estimates,
)
from dcflow.targets import JobSpec

__all__ = [
    "TRACKED_DATASETS",
    "NeedRun",
    "OutputState",
    "needrun",
    "plan_index",
    "read_file_list",
    "scan_tree",
]

TRACKED_DATASETS: dict[str, tuple[str, ...]] = {
    "bias": ("ccd",),
    "flat": ("filter", "ccd"),
    "calexp": ("visit", "ccd"),
    "src": ("visit", "ccd"),
    "science_validation": (),
    "science_validation_plot": (),
    "warp": ("tract", "patch", "visit"),
    "deepCoadd": ("tract", "patch", "filter"),
    "templateCoadd": ("tract", "patch", "filter"),
    "deepCoadd_det": ("tract", "patch"),
    "object": ("tract", "patch"),
    "forced_src": ("visit", "ccd"),
}
"""Output dataset types the planner tracks, with the data id keys that index them."""

RULE_ORDER = (
    "bias",
    "flat",
    "process_visit",
    "science_validation",
    "make_warp",
    "assemble_coadd",
    "measure_patch",
    "forced_photometry",
    "fe55_simulate",
    "fe55_gain",
    "fe55_summary",
    "all",
)
"""Rules in workflow order (plan rows follow it)."""

_INT = r"(?:0|[1-9][0-9]*)"


@dataclass(slots=True)
class OutputState:
    """Which outputs of a campaign exist (or are marked incomplete), as boolean arrays.

    Attributes
    ----------
    arrays : dict of numpy.ndarray
        Per tracked dataset type: ``bias (ccd)``, ``flat (filter, ccd)``, ``calexp``, ``src``,
        ``forced_src (visit, ccd)``, ``warp (pair)``, ``deepCoadd``, ``templateCoadd
        (patch, filter)``, ``deepCoadd_det``, ``object (patch)``, ``science_validation``,
        ``science_validation_plot`` (shape ``(1,)``); indices as in `CampaignIndex`.
    fe55 : set of str
        Normalized absolute paths of Fe55 outputs found (a small set).
    n_files : int
        Names read (files listed, or lines of the file list).
    """

    arrays: dict[str, np.ndarray]
    fe55: set[str]
    n_files: int


def _empty_state(index: CampaignIndex) -> OutputState:
    nv, nc, nb = index.n_visits, len(index.ccds), len(index.filters)
    npatch = index.n_patches
    shapes = {
        "bias": (nc,),
        "flat": (nb, nc),
        "calexp": (nv, nc),
        "src": (nv, nc),
        "forced_src": (nv, nc),
        "science_validation": (1,),
        "science_validation_plot": (1,),
        "warp": (index.n_pairs,),
        "deepCoadd": (npatch, nb),
        "templateCoadd": (npatch, nb),
        "deepCoadd_det": (npatch,),
        "object": (npatch,),
    }
    return OutputState({k: np.zeros(v, dtype=bool) for k, v in shapes.items()}, set(), 0)


class _Locator:
    """Turns parsed data id columns into flat indices of the `OutputState` arrays."""

    def __init__(self, index: CampaignIndex) -> None:
        self.index = index
        self.band_of = {band: i for i, band in enumerate(index.filters)}
        ccds = index.ccds
        self.ccd_lookup = np.full(int(ccds.max()) + 2 if ccds.size else 1, -1, dtype=np.int64)
        self.ccd_lookup[ccds] = np.arange(ccds.size)
        self.n_side = index.skymap.n_patches if index.skymap is not None else 1
        keys = index.patch_keys()
        self.patch_order = np.argsort(keys, kind="stable")
        self.patch_keys_sorted = keys[self.patch_order]
        self.pair_keys = index.pair_patch.astype(np.int64) * max(index.n_visits, 1) + (
            index.pair_visit
        )

    def _lookup(self, sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        if sorted_keys.size == 0:
            return np.full(values.shape, -1, dtype=np.int64)
        where = np.minimum(np.searchsorted(sorted_keys, values), sorted_keys.size - 1)
        return np.where(sorted_keys[where] == values, where, -1)

    def visit(self, values: np.ndarray) -> np.ndarray:
        return self._lookup(self.index.visits, values)

    def ccd(self, values: np.ndarray) -> np.ndarray:
        ok = (values >= 0) & (values < self.ccd_lookup.size)
        return np.where(ok, self.ccd_lookup[np.where(ok, values, 0)], -1)

    def patch(self, tract: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n = self.n_side
        ok = (x < n) & (y < n)
        found = self._lookup(self.patch_keys_sorted, (tract * n + y) * n + x)
        found = np.where(ok & (found >= 0), self.patch_order[np.maximum(found, 0)], -1)
        return found

    def flat_index(self, dataset: str, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, tuple]:
        """Flat indices (``-1``: not a job output of this campaign) and the array shape."""
        idx = self.index
        nv, nc, nb = idx.n_visits, len(idx.ccds), len(idx.filters)
        keys = TRACKED_DATASETS[dataset]
        if not keys:
            return np.zeros(1, dtype=np.int64), (1,)
        parts: list[tuple[np.ndarray, int]] = []
        patch = None
        if "tract" in keys:
            patch = self.patch(columns["tract"], columns["patch_x"], columns["patch_y"])
        for key in keys:
            if key == "visit" and dataset != "warp":
                parts.append((self.visit(columns["visit"]), nv))
            elif key == "ccd":
                parts.append((self.ccd(columns["ccd"]), nc))
            elif key == "filter":
                parts.append((columns["filter"], nb))
            elif key == "patch" and dataset != "warp":
                parts.append((patch, idx.n_patches))
        if dataset == "warp":
            v = self.visit(columns["visit"])
            pair = self._lookup(self.pair_keys, patch * max(nv, 1) + v)
            return np.where((patch >= 0) & (v >= 0), pair, -1), (idx.n_pairs,)
        flat = np.zeros(len(parts[0][0]), dtype=np.int64)
        bad = np.zeros(len(flat), dtype=bool)
        shape = []
        for values, size in parts:
            bad |= values < 0
            flat = flat * size + np.maximum(values, 0)
            shape.append(size)
        return np.where(bad, -1, flat), tuple(shape)


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
    """Parsed data id columns per dataset type, as int64 arrays (filters as band indices)."""

    def __init__(self, band_of: Mapping[str, int]) -> None:
        self.columns: dict[str, dict[str, list[np.ndarray]]] = {}
        self.band_of = band_of

    def add(self, dataset: str, matches: list, names: tuple[str, ...]) -> None:
        """Add regex matches: tuples of group texts in ``names`` order (or texts, one group)."""
        if not matches:
            return
        cols = self.columns.setdefault(dataset, {n: [] for n in names})
        single = not isinstance(matches[0], tuple)
        n = len(matches)
        for k, name in enumerate(names):
            values = matches if single else [m[k] for m in matches]
            if name == "filter":
                band_of = self.band_of
                found = (band_of.get(v, -1) for v in values)
                cols[name].append(np.fromiter(found, dtype=np.int64, count=n))
            else:
                cols[name].append(np.fromiter(map(int, values), dtype=np.int64, count=n))

    def add_one(self, dataset: str, values: dict[str, str]) -> None:
        names = tuple(values)
        self.add(dataset, [tuple(values[n] for n in names)], names)


def _apply(state: OutputState, acc: _Accumulator, locator: _Locator) -> None:
    for dataset, cols in acc.columns.items():
        if not cols:
            state.arrays[dataset][0] = True
            continue
        columns = {name: np.concatenate(parts) for name, parts in cols.items()}
        flat, _ = locator.flat_index(dataset, columns)
        target = state.arrays[dataset].reshape(-1)
        target[flat[flat >= 0]] = True


def _rooted_templates(index: CampaignIndex) -> dict[str, str]:
    layout = index.layout
    return {name: layout.pattern(name) for name in TRACKED_DATASETS}


def _fe55_outputs(index: CampaignIndex, workdir: str) -> tuple[list[JobSpec], set[str]]:
    if not index.fe55.sensors:
        return [], set()
    from dcflow.fe55_targets import fe55_jobs

    jobs = fe55_jobs(index.fe55, index.layout)
    paths = {os.path.normpath(os.path.join(workdir, p)) for job in jobs for p in job.outputs}
    return jobs, paths


def scan_tree(index: CampaignIndex, *, workdir: str | os.PathLike = ".") -> OutputState:
    """What exists, from one guided walk of the output tree (names only, no stat per file).

    Only the directories that the tracked templates name are listed: for
    ``calexp/{visit}/calexp_{visit}_{ccd}.fits``, ``calexp/`` and each ``calexp/<visit>/``.
    Each directory's names are parsed in one regex pass.

    Parameters
    ----------
    index : CampaignIndex
        The campaign (its layout gives the templates).
    workdir : path-like
        Directory that relative layout roots are relative to.
    """
    workdir = os.path.abspath(workdir)
    state = _empty_state(index)
    locator = _Locator(index)
    acc = _Accumulator(locator.band_of)
    filters = index.filters
    for dataset, pattern in _rooted_templates(index).items():
        full = os.path.normpath(os.path.join(workdir, pattern))
        segments = full.split(os.sep)
        # the longest literal prefix is the starting directory
        k = 0
        while k < len(segments) - 1 and "{" not in segments[k]:
            k += 1
        start = os.sep.join(segments[:k]) or os.sep
        rest = segments[k:]
        state.n_files += _walk(start, rest, filters, dataset, acc, {})
    _apply(state, acc, locator)
    _, fe55_paths = _fe55_outputs(index, workdir)
    state.fe55 = {p for p in fe55_paths if os.path.exists(p)}
    return state


def _walk(
    directory: str,
    segments: list[str],
    filters: tuple[str, ...],
    dataset: str,
    acc: _Accumulator,
    captured: dict[str, str],
) -> int:
    segment = segments[0]
    last = len(segments) == 1
    fields = [n for _, n, _, _ in string.Formatter().parse(segment) if n]
    if not fields:
        path = os.path.join(directory, segment)
        if last:
            if os.path.isfile(path):
                acc.add_one(dataset, dict(captured))
                return 1
            return 0
        return _walk(path, segments[1:], filters, dataset, acc, captured)
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
            )
        return found
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


def _open_text(path: str | os.PathLike):
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def read_file_list(
    index: CampaignIndex,
    lines: str | os.PathLike | Iterable[str],
    *,
    workdir: str | os.PathLike = ".",
    chunk_bytes: int = 1 << 26,
) -> OutputState:
    """What exists, from a file list: one path per line (absolute or relative to ``workdir``).

    Parameters
    ----------
    index : CampaignIndex
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
    workdir = os.path.abspath(workdir)
    state = _empty_state(index)
    locator = _Locator(index)
    acc = _Accumulator(locator.band_of)
    root = os.path.normpath(os.path.join(workdir, index.layout.output_root))
    head = root + os.sep
    absolute: list[tuple[str, re.Pattern, tuple[str, ...]]] = []
    relative: list[tuple[str, re.Pattern, tuple[str, ...]]] = []
    for dataset, pattern in _rooted_templates(index).items():
        rel = os.path.relpath(os.path.normpath(os.path.join(workdir, pattern)), root)
        body = _template_regex(rel, index.filters) + "(?=\n)"
        for prefix, out in ((re.escape("\n" + head), absolute), ("\n", relative)):
            regex = re.compile(prefix + body)
            names = tuple(sorted(regex.groupindex, key=regex.groupindex.get))
            out.append((dataset, regex, names))
    _, fe55_paths = _fe55_outputs(index, workdir)
    fe55_found: set[str] = set()

    def parse(text: str, regexes: list[tuple[str, re.Pattern, tuple[str, ...]]]) -> None:
        for dataset, regex, names in regexes:
            matches = regex.findall(text)
            if names:
                acc.add(dataset, matches, names)
            elif matches:
                acc.add_one(dataset, {})

    def consume(text: str) -> int:
        """Parse a block of whole lines; returns the number of lines."""
        if not text.endswith("\n"):
            text += "\n"
        n_lines = text.count("\n")
        text = "\n" + text
        if text.count("\n" + head) == n_lines:
            parse(text, absolute)
            for path in fe55_paths:
                if "\n" + path + "\n" in text:
                    fe55_found.add(path)
            return n_lines
        rels = []
        for line in text[1:-1].split("\n"):
            full = os.path.normpath(os.path.join(workdir, line))
            if full in fe55_paths:
                fe55_found.add(full)
            if full.startswith(head):
                rels.append(full[len(head) :])
        if rels:
            parse("\n" + "\n".join(rels) + "\n", relative)
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
    state.fe55 = fe55_found
    return state


@dataclass(frozen=True, slots=True)
class NeedRun:
    """Which jobs must run, per rule, as boolean arrays (indices as in `CampaignIndex`).

    Attributes
    ----------
    bias : (n_ccds,)
    flat : (n_filters, n_ccds)
    process_visit : (n_visits,)
    science_validation : (1,) or (0,)
    make_warp : (n_pairs,)
    assemble_coadd : (n_coadds,), jobs ``coadd_patch``/``coadd_band``
    measure_patch : (n_patches,)
    forced_photometry : (n_visits,), only where ``forced_visit``
    all : bool
    """

    bias: np.ndarray
    flat: np.ndarray
    process_visit: np.ndarray
    science_validation: np.ndarray
    make_warp: np.ndarray
    assemble_coadd: np.ndarray
    measure_patch: np.ndarray
    forced_photometry: np.ndarray
    coadd_patch: np.ndarray
    coadd_band: np.ndarray
    forced_visit: np.ndarray
    fe55_jobs: tuple[JobSpec, ...]
    fe55_needed: frozenset[int]
    all: bool
    passes: int


def _seed(exists: OutputState, incomplete: OutputState | None, name: str) -> np.ndarray:
    """Outputs that are both present and marked incomplete (their job reruns)."""
    if incomplete is None:
        return np.zeros_like(exists.arrays[name])
    return exists.arrays[name] & incomplete.arrays[name]


def _any_per(mask: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """For each of ``n`` groups: whether any element of ``mask`` in it is set."""
    return np.bincount(groups[mask], minlength=n)[:n] > 0


def needrun(
    index: CampaignIndex,
    exists: OutputState,
    incomplete: OutputState | None = None,
    *,
    workdir: str | os.PathLike = ".",
) -> NeedRun:
    """Apply Snakemake's needrun rules to the whole campaign (see the module docstring)."""
    ex = exists.arrays
    nv, nb = index.n_visits, len(index.filters)
    npatch = index.n_patches
    calib = index.needs_calibs
    band = index.visit_band.astype(np.int64)
    pair_visit = index.pair_visit.astype(np.int64)
    pair_patch = index.pair_patch.astype(np.int64)
    pair_band = band[pair_visit] if pair_visit.size else np.zeros(0, dtype=np.int64)
    coadd_patch, coadd_band = np.nonzero(index.patch_band_visits > 0)
    n_coadds = coadd_patch.size
    coadd_of = np.full((npatch, max(nb, 1)), -1, dtype=np.int64)
    coadd_of[coadd_patch, coadd_band] = np.arange(n_coadds)
    pair_coadd = coadd_of[pair_patch, pair_band] if pair_patch.size else pair_patch
    forced_visit = index.forced_visit_mask

    calexp_ok = ex["calexp"].all(axis=1)
    visit_done = calexp_ok & ex["src"].all(axis=1)
    pv = ~visit_done | (_seed(exists, incomplete, "calexp") | _seed(exists, incomplete, "src")).any(
        axis=1
    )
    bias = _seed(exists, incomplete, "bias") if calib else np.zeros(0, dtype=bool)
    flat = _seed(exists, incomplete, "flat") if calib else np.zeros((0, 0), dtype=bool)
    if index.has_truth:
        sv_inc = _seed(exists, incomplete, "science_validation") | _seed(
            exists, incomplete, "science_validation_plot"
        )
        sv = ~ex["science_validation"] | sv_inc
    else:
        sv = np.zeros(0, dtype=bool)
    warp = _seed(exists, incomplete, "warp")
    template_ok = ex["templateCoadd"][coadd_patch, coadd_band]
    deep_ok = ex["deepCoadd"][coadd_patch, coadd_band]
    coadd = (
        ~template_ok
        | _seed(exists, incomplete, "templateCoadd")[coadd_patch, coadd_band]
        | _seed(exists, incomplete, "deepCoadd")[coadd_patch, coadd_band]
    )
    mp = (
        ~ex["object"]
        | _seed(exists, incomplete, "object")
        | _seed(exists, incomplete, "deepCoadd_det")
    )
    fp = forced_visit & (
        ~ex["forced_src"].all(axis=1) | _seed(exists, incomplete, "forced_src").any(axis=1)
    )
    warp_ok = ex["warp"]
    object_ok = ex["object"]
    bias_ok = ex["bias"] if calib else bias
    flat_ok = ex["flat"] if calib else flat

    def total() -> int:
        return int(bias.sum() + flat.sum() + pv.sum() + sv.sum() + warp.sum() + coadd.sum()) + int(
            mp.sum() + fp.sum()
        )

    passes = 0
    before = -1
    while True:
        now = total()
        if now == before:
            break
        before = now
        passes += 1
        # downstream: a job that runs makes every job using its outputs run
        if calib:
            flat |= bias[None, :]
            if bias.any():
                pv[:] = True
            pv |= flat.any(axis=1)[band]
        if sv.size and pv.any():
            sv[:] = True
        warp |= pv[pair_visit]
        fp |= pv & forced_visit
        coadd |= _any_per(warp, pair_coadd, n_coadds)
        mp |= _any_per(coadd, coadd_patch, npatch)
        fp |= _any_per(mp[pair_patch], pair_visit, nv)
        # upstream: the files a running job needs that are missing make their producer run
        if calib and pv.any():
            bias |= ~bias_ok
            flat |= _any_per(pv, band, nb)[:, None] & ~flat_ok
        if calib:
            bias |= flat.any(axis=0) & ~bias_ok
        if sv.size and sv.any():
            pv |= ~visit_done
        pv |= _any_per(warp, pair_visit, nv) & ~calexp_ok
        pv |= fp & ~calexp_ok
        warp |= coadd[pair_coadd] & ~warp_ok
        coadd |= mp[coadd_patch] & ~deep_ok
        mp |= _any_per(fp[pair_visit] & ~object_ok[pair_patch], pair_patch, npatch)

    fe55_jobs, _ = _fe55_outputs(index, os.fspath(workdir))
    fe55_needed: set[int] = set()
    if fe55_jobs:
        from dcflow.fe55_targets import fe55_targets

        targets = JobSpec("all", {}, (), tuple(fe55_targets(index.fe55, index.layout)))
        marked = incomplete.fe55 if incomplete is not None else set()
        fe55_needed = needrun_jobs(
            [*fe55_jobs, targets], exists.fe55, marked, workdir=os.path.abspath(workdir)
        ) - {len(fe55_jobs)}
    run_all = bool(total() or fe55_needed)
    return NeedRun(
        bias=bias,
        flat=flat,
        process_visit=pv,
        science_validation=sv,
        make_warp=warp,
        assemble_coadd=coadd,
        measure_patch=mp,
        forced_photometry=fp,
        coadd_patch=coadd_patch,
        coadd_band=coadd_band,
        forced_visit=forced_visit,
        fe55_jobs=tuple(fe55_jobs),
        fe55_needed=frozenset(fe55_needed),
        all=run_all,
        passes=passes,
    )


def _group_rows(
    rule: str,
    need: np.ndarray,
    band: np.ndarray | None,
    tract: np.ndarray | None,
    filters: tuple[str, ...],
) -> list[tuple[str, str | None, int | None, int, int]]:
    """``(rule, filter, tract, total, to_run)`` per filter x tract of one rule's jobs."""
    if need.size == 0:
        return []
    nb = max(len(filters), 1)
    b = band.astype(np.int64) if band is not None else np.zeros(need.size, dtype=np.int64)
    if tract is not None:
        tracts, t = np.unique(tract, return_inverse=True)
    else:
        tracts, t = np.zeros(1, dtype=np.int64), np.zeros(need.size, dtype=np.int64)
    key = t.astype(np.int64) * nb + b
    size = len(tracts) * nb
    totals = np.bincount(key, minlength=size)
    runs = np.bincount(key[need], minlength=size)
    out = []
    for k in np.flatnonzero(totals):
        t_i, b_i = divmod(int(k), nb)
        out.append(
            (
                rule,
                filters[b_i] if band is not None else None,
                int(tracts[t_i]) if tract is not None else None,
                int(totals[k]),
                int(runs[k]),
            )
        )
    return out


def _to_run_builder(index: CampaignIndex, need: NeedRun) -> Callable[[], dict]:
    def build() -> dict:
        out: dict[tuple[str, str], tuple[str | None, int | None]] = {}
        filters = index.filters
        ccds = index.ccds.tolist()
        for c in np.flatnonzero(need.bias).tolist():
            out[("bias", tile_of({"ccd": ccds[c]}))] = (None, None)
        for b, c in zip(*np.nonzero(need.flat), strict=True):
            out[("flat", tile_of({"filter": filters[b], "ccd": ccds[c]}))] = (filters[b], None)
        for v in np.flatnonzero(need.process_visit).tolist():
            band = filters[index.visit_band[v]]
            out[("process_visit", tile_of({"visit": int(index.visits[v])}))] = (band, None)
        if need.science_validation.any():
            out[("science_validation", tile_of({}))] = (None, None)
        for k in np.flatnonzero(need.make_warp).tolist():
            v, p = int(index.pair_visit[k]), int(index.pair_patch[k])
            tract = int(index.patch_tract[p])
            data_id = {"visit": int(index.visits[v]), "tract": tract, "patch": index.patch_name(p)}
            out[("make_warp", tile_of(data_id))] = (filters[index.visit_band[v]], tract)
        for k in np.flatnonzero(need.assemble_coadd).tolist():
            p, b = int(need.coadd_patch[k]), int(need.coadd_band[k])
            tract = int(index.patch_tract[p])
            data_id = {"filter": filters[b], "tract": tract, "patch": index.patch_name(p)}
            out[("assemble_coadd", tile_of(data_id))] = (filters[b], tract)
        for p in np.flatnonzero(need.measure_patch).tolist():
            tract = int(index.patch_tract[p])
            data_id = {"tract": tract, "patch": index.patch_name(p)}
            out[("measure_patch", tile_of(data_id))] = (None, tract)
        for v in np.flatnonzero(need.forced_photometry).tolist():
            band = filters[index.visit_band[v]]
            out[("forced_photometry", tile_of({"visit": int(index.visits[v])}))] = (band, None)
        for i in sorted(need.fe55_needed):
            job = need.fe55_jobs[i]
            out[(job.rule, tile_of(job.data_id))] = (job.filter, job.tract)
        if need.all:
            out[("all", tile_of({}))] = (None, None)
        return out

    return build


def plan_index(
    index: CampaignIndex,
    *,
    workdir: str | os.PathLike = ".",
    inventory: str | os.PathLike | None = None,
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
        A file list (one path per line, ``.gz`` allowed) instead of walking the output tree.
    mean_runtimes_s, default_runtimes_min, fallback_runtime_min
        CPU estimates, as `dcflow.plan.runtime_estimates`.
    start_time : float, optional
        ``time.perf_counter()`` when planning started (the plan's ``seconds`` then include
        building the index).

    Returns
    -------
    Plan
        Rows in workflow order; ``to_run`` is a `dcflow.plan.LazyMapping` (built on first use).
    """
    start = time.perf_counter() if start_time is None else start_time
    workdir = os.path.abspath(workdir)
    if inventory is None:
        exists = scan_tree(index, workdir=workdir)
    else:
        exists = read_file_list(index, inventory, workdir=workdir)
    marked = incomplete_outputs(workdir)
    incomplete = read_file_list(index, sorted(marked), workdir=workdir) if marked else None
    need = needrun(index, exists, incomplete, workdir=workdir)
    filters = index.filters
    band = index.visit_band
    pair_band = band[index.pair_visit] if index.n_pairs else np.zeros(0, dtype=np.int8)
    pair_tract = index.patch_tract[index.pair_patch] if index.n_pairs else np.zeros(0)
    nb, nc = len(filters), len(index.ccds)
    counts = []
    counts += _group_rows("bias", need.bias, None, None, filters)
    counts += _group_rows(
        "flat",
        need.flat.reshape(-1),
        np.repeat(np.arange(nb), nc) if need.flat.size else None,
        None,
        filters,
    )
    counts += _group_rows("process_visit", need.process_visit, band, None, filters)
    counts += _group_rows("science_validation", need.science_validation, None, None, filters)
    counts += _group_rows("make_warp", need.make_warp, pair_band, pair_tract, filters)
    counts += _group_rows(
        "assemble_coadd",
        need.assemble_coadd,
        need.coadd_band,
        index.patch_tract[need.coadd_patch],
        filters,
    )
    counts += _group_rows("measure_patch", need.measure_patch, None, index.patch_tract, filters)
    fv = need.forced_visit
    counts += _group_rows("forced_photometry", need.forced_photometry[fv], band[fv], None, filters)
    for rule in ("fe55_simulate", "fe55_gain", "fe55_summary"):
        jobs = [i for i, job in enumerate(need.fe55_jobs) if job.rule == rule]
        if jobs:
            n_run = sum(i in need.fe55_needed for i in jobs)
            counts.append((rule, None, None, len(jobs), n_run))
    counts.append(("all", None, None, 1, int(need.all)))
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
        to_run=LazyMapping(_to_run_builder(index, need)),
        cpu_hours=sum(r.cpu_hours for r in rows),
        runtime_source=source,
        n_files=exists.n_files,
        seconds=time.perf_counter() - start,
    )
