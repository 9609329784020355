"""A shard's manifest: what one shard's Snakemake reads in shard mode (``--config shard=``).

Kept below the index and the shard builder, which both read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dcflow.atomic import write_json
from dcflow.layout import Layout

__all__ = ["ShardManifest", "digest", "read_manifest", "shards_dir", "write_manifest"]


def digest(obj: Any) -> str:
    """SHA-256 of an object's canonical JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ShardManifest:
    """What one shard's Snakemake reads in shard mode (``--config shard=<path>``)."""

    shard_id: str
    kind: str
    rules: tuple[str, ...]
    visits: tuple[int, ...]
    patches: tuple[tuple[int, str], ...]
    targets: tuple[str, ...]
    upstream: tuple[str, ...]
    ccds: tuple[int, ...]
    filters: tuple[str, ...]

    def digest(self) -> str:
        """SHA-256 of the manifest's canonical JSON (the shard's input list)."""
        return digest(asdict(self))


def shards_dir(layout: Layout) -> Path:
    """Directory of the shard markers and manifests (``<output_root>/shards``)."""
    return Path(layout.output_root) / "shards"


def write_manifest(manifest: ShardManifest, layout: Layout) -> Path:
    """Write a shard's manifest atomically; return its path."""
    path = shards_dir(layout) / "manifests" / f"{manifest.shard_id}.json"
    write_json(asdict(manifest), path)
    return path


def read_manifest(path: str | Path) -> ShardManifest:
    """Read a manifest written by `write_manifest`.

    Raises
    ------
    ValueError
        If the file is not a shard manifest; the message names it.
    """
    try:
        data = json.loads(Path(path).read_text())
        return ShardManifest(
            shard_id=str(data["shard_id"]),
            kind=str(data["kind"]),
            rules=tuple(data["rules"]),
            visits=tuple(int(v) for v in data["visits"]),
            patches=tuple((int(t), str(p)) for t, p in data["patches"]),
            targets=tuple(data["targets"]),
            upstream=tuple(data["upstream"]),
            ccds=tuple(int(c) for c in data["ccds"]),
            filters=tuple(data["filters"]),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a shard manifest ({exc})") from exc
