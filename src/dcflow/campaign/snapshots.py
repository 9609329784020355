"""What a campaign keeps of its own planning, so status and rerun need not redo it.

At DC2013 scale the index (registry aggregates and ~8 M visit/patch overlaps) takes tens of
seconds and a plan a minute; ``dcflow status``, ``failed`` and ``rerun --failed`` must answer
in seconds. Two files under the output root (`dcflow.layout` templates ``index_cache`` and
``plan_snapshot``) hold them:

- the index's arrays, keyed by a digest of the config and the registry file's size and
  modification time (an ingest or a config edit makes a new one);
- the last plan's per-stage needrun arrays and when its output scan began: jobs the ledger
  saw succeed after that moment are done, the others are as the plan found them.

Both are ``.npz`` files (arrays and JSON text, no pickle) written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dcflow.atomic import atomic_path
from dcflow.campaign.index import ARRAY_FIELDS, CampaignIndex
from dcflow.layout import Layout

__all__ = [
    "PlanSnapshot",
    "campaign_digest",
    "load_index",
    "read_plan_snapshot",
    "save_index",
    "write_plan_snapshot",
]

_FORMAT = 2
"""Bumped when what the files hold changes (an older file is then ignored)."""


def campaign_digest(config: Mapping[str, Any], registry_path: str | os.PathLike) -> str:
    """A digest of the config and of the registry file's identity (size, mtime, inode)."""
    stat = os.stat(registry_path)
    text = json.dumps(
        {
            "format": _FORMAT,
            "config": config,
            "registry": [os.fspath(registry_path), stat.st_size, stat.st_mtime_ns, stat.st_ino],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def _read_npz(path: str | os.PathLike, digest: str) -> dict[str, np.ndarray] | None:
    """The arrays of an ``.npz`` whose stored digest is ``digest`` (None: absent or stale)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["digest"]) != digest:
                return None
            return {name: data[name] for name in data.files}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def save_index(index: CampaignIndex, path: str | os.PathLike, digest: str) -> None:
    """Keep the index's arrays (what the registry and the overlaps gave) under ``digest``."""
    arrays = {name: getattr(index, name) for name in ARRAY_FIELDS}
    arrays["filters"] = np.array(json.dumps(list(index.filters)))
    arrays["digest"] = np.array(digest)
    _write_npz(path, arrays)


def load_index(
    path: str | os.PathLike, digest: str, config: Mapping[str, Any], layout: Layout
) -> CampaignIndex | None:
    """The index of ``config`` kept under ``digest`` (None if absent or stale)."""
    arrays = _read_npz(path, digest)
    if arrays is None:
        return None
    values: dict[str, Any] = {name: arrays[name] for name in ARRAY_FIELDS}
    values["filters"] = tuple(json.loads(str(arrays["filters"])))
    return CampaignIndex.assemble(config, layout, values)


@dataclass(frozen=True, slots=True)
class PlanSnapshot:
    """The needrun arrays of one plan and when its scan of the outputs began.

    Attributes
    ----------
    need : dict of numpy.ndarray
        Per stage (rule), one boolean per job: must it run.
    scanned_at : float
        Unix time the output scan began: a success the ledger recorded after it is not in
        ``need``'s picture yet.
    """

    need: Mapping[str, np.ndarray]
    scanned_at: float


def write_plan_snapshot(path: str | os.PathLike, snapshot: PlanSnapshot, digest: str) -> None:
    """Keep a plan's needrun arrays (bit-packed) under ``digest``."""
    arrays: dict[str, np.ndarray] = {
        "digest": np.array(digest),
        "scanned_at": np.array(snapshot.scanned_at),
        "rules": np.array(json.dumps({r: int(v.size) for r, v in snapshot.need.items()})),
    }
    for i, flags in enumerate(snapshot.need.values()):
        arrays[f"need_{i}"] = np.packbits(np.asarray(flags, dtype=bool))
    _write_npz(path, arrays)


def read_plan_snapshot(path: str | os.PathLike, digest: str) -> PlanSnapshot | None:
    """The plan snapshot kept under ``digest`` (None if absent or stale)."""
    arrays = _read_npz(path, digest)
    if arrays is None:
        return None
    sizes = json.loads(str(arrays["rules"]))
    need = {
        rule: np.unpackbits(arrays[f"need_{i}"], count=size).astype(bool)
        for i, (rule, size) in enumerate(sizes.items())
    }
    return PlanSnapshot(need=need, scanned_at=float(arrays["scanned_at"]))
