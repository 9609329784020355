"""Camera descriptions: one declarative YAML file per camera, as LSST's obs_* packages have.

A description (``dcflow/instruments/cameras/<name>.yaml``, validated by
``cameras/camera.schema.yaml``) says

- where each amplifier of each detector sits in the raw array, with its prescan, data and
  overscan columns and its parallel overscan rows counted in **readout order**, whether the
  stored block is mirrored in x or y, which rows and columns are not live, and its nominal
  gain and read noise;
- which data-id keys a raw file has and where each comes from (a header keyword, a named group
  of a file-name or path pattern, a constant, or an integer packed from other keys);
- which companion files belong to a raw (SDSS fpM, psField, tsField), how they are named, and
  which of their own header keywords must agree with the raw.

`read_amplifiers` cuts a raw array into per-amplifier arrays oriented in readout order (row 0
read first, column 0 read first), so that raws whose headers lack section keywords can be read;
`AmplifierGrid.detector_layout` gives the same geometry as a `dcflow.geometry.DetectorLayout`
(stored orientation), which the ISR, Fe55 and photon-transfer stages take.

Amplifier blocks are laid out on a regular grid: the block of the amplifier at grid position
``(ix, iy)`` starts at raw column ``ix * block_nx`` and raw row ``iy * block_ny``. Cameras whose
blocks differ in size are not described yet.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import yaml

from dcflow.geometry import AmpGeometry, DetectorLayout

__all__ = [
    "CAMERA_DIR",
    "AmpReadout",
    "AmplifierDescription",
    "AmplifierGrid",
    "CameraDescription",
    "camera_names",
    "load_camera",
    "read_amplifiers",
]

CAMERA_DIR = Path(__file__).resolve().parent / "cameras"
"""Directory of the shipped camera descriptions and their schema."""

_SCHEMA_PATH = CAMERA_DIR / "camera.schema.yaml"
_SOURCE_KINDS = ("header", "file", "path", "value", "pack")


def camera_names() -> list[str]:
    """Names of the shipped camera descriptions."""
    return sorted(p.stem for p in CAMERA_DIR.glob("*.yaml") if p.name != _SCHEMA_PATH.name)


@dataclass(frozen=True, slots=True)
class AmplifierDescription:
    """One amplifier: its block in the raw array and its regions in readout order.

    Parameters
    ----------
    name : str
        Amplifier name.
    position : tuple of int
        ``(ix, iy)`` grid position of its block.
    rows : int
        Rows read, parallel overscan and non-live rows included (pixels).
    prescan_cols, data_cols, overscan_cols : int
        Columns of each row in readout order (pixels).
    parallel_overscan_rows : int
        Rows read after the imaging rows (pixels).
    non_live_rows : int
        First rows read that hold no live charge (pixels).
    non_live_columns : tuple of int
        Imaging columns (readout order) that are not live.
    prescan_trim : tuple of int
        Prescan columns left out of the bias at its start and its end (pixels).
    flip_x, flip_y : bool
        Stored columns (rows) run against readout order.
    gain_e_per_adu : float
        Nominal gain (e-/ADU); NaN when the description gives none.
    read_noise_e : float
        Nominal read noise (e-); NaN when the description gives none.
    """

    name: str
    position: tuple[int, int]
    rows: int
    prescan_cols: int
    data_cols: int
    overscan_cols: int
    parallel_overscan_rows: int = 0
    non_live_rows: int = 0
    non_live_columns: tuple[int, ...] = ()
    prescan_trim: tuple[int, int] = (0, 0)
    flip_x: bool = False
    flip_y: bool = False
    gain_e_per_adu: float = math.nan
    read_noise_e: float = math.nan

    def __post_init__(self) -> None:
        if self.non_live_rows + self.parallel_overscan_rows >= self.rows - 8:
            raise ValueError(
                f"amplifier {self.name}: non_live_rows + parallel_overscan_rows "
                f"({self.non_live_rows} + {self.parallel_overscan_rows}) must leave >= 8 of "
                f"its {self.rows} rows"
            )
        if self.prescan_cols and sum(self.prescan_trim) >= self.prescan_cols:
            raise ValueError(
                f"amplifier {self.name}: prescan_trim {list(self.prescan_trim)} leaves none of "
                f"its {self.prescan_cols} prescan columns"
            )
        bad = [c for c in self.non_live_columns if c >= self.data_cols]
        if bad:
            raise ValueError(
                f"amplifier {self.name}: non_live_columns {bad} outside its {self.data_cols} "
                "imaging columns"
            )

    @property
    def block_shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the amplifier's block in the raw array."""
        return self.rows, self.prescan_cols + self.data_cols + self.overscan_cols

    @property
    def data_rows(self) -> slice:
        """Live imaging rows, in readout order."""
        return slice(self.non_live_rows, self.rows - self.parallel_overscan_rows)

    def readout_regions(self) -> dict[str, tuple[slice, slice] | None]:
        """Regions in readout coordinates, keyed prescan, data, serial_overscan, parallel_overscan.

        Rows of every region but the parallel overscan are the live imaging rows.
        """
        rows = self.data_rows
        p, d, o = self.prescan_cols, self.data_cols, self.overscan_cols
        first, last = self.prescan_trim
        return {
            "prescan": (rows, slice(first, p - last)) if p else None,
            "data": (rows, slice(p, p + d)),
            "serial_overscan": (rows, slice(p + d, p + d + o)) if o else None,
            "parallel_overscan": (
                (slice(rows.stop, self.rows), slice(p, p + d))
                if self.parallel_overscan_rows
                else None
            ),
        }

    def stored_region(
        self, region: tuple[slice, slice], origin: tuple[int, int]
    ) -> tuple[slice, slice]:
        """A readout-coordinate region as ``(y, x)`` slices of the raw array.

        Parameters
        ----------
        region : tuple of slice
            ``(rows, cols)`` in readout order (steps of 1).
        origin : tuple of int
            ``(y0, x0)`` raw corner of this amplifier's block.
        """
        ny, nx = self.block_shape
        rows, cols = region
        y0, x0 = origin
        if self.flip_y:
            rows = slice(ny - rows.stop, ny - rows.start)
        if self.flip_x:
            cols = slice(nx - cols.stop, nx - cols.start)
        return slice(y0 + rows.start, y0 + rows.stop), slice(x0 + cols.start, x0 + cols.stop)


@dataclass(frozen=True, slots=True)
class AmpReadout:
    """One amplifier's pixels oriented in readout order (views of the raw array).

    Row 0 is the first row read (next to the serial register), column 0 the first pixel read
    in a row. ``prescan``, ``data`` and ``serial_overscan`` share the live imaging rows.

    Parameters
    ----------
    name : str
        Amplifier name.
    prescan : numpy.ndarray or None
        ``(ny_live, n_prescan)`` prescan pixels (trimmed), None when the amplifier has none.
    data : numpy.ndarray
        ``(ny_live, data_cols)`` imaging pixels.
    serial_overscan : numpy.ndarray or None
        ``(ny_live, overscan_cols)`` serial overscan pixels.
    parallel_overscan : numpy.ndarray or None
        ``(parallel_overscan_rows, data_cols)`` parallel overscan pixels.
    live_columns : numpy.ndarray
        ``(data_cols,)`` bool, False for the description's non-live columns.
    block : numpy.ndarray
        ``(rows, prescan + data + overscan)``: the whole block in readout order, non-live rows
        and untrimmed prescan included.
    """

    name: str
    prescan: np.ndarray | None
    data: np.ndarray
    serial_overscan: np.ndarray | None
    parallel_overscan: np.ndarray | None
    live_columns: np.ndarray
    block: np.ndarray


@dataclass(frozen=True, slots=True)
class AmplifierGrid:
    """The amplifiers of one detector type, on a regular grid of equal blocks.

    Parameters
    ----------
    ids : tuple of int
        Detector numbers (the ``ccd`` data-id key) of this type.
    amps : tuple of AmplifierDescription
        The amplifiers in header order.
    """

    ids: tuple[int, ...]
    amps: tuple[AmplifierDescription, ...]

    def __post_init__(self) -> None:
        shapes = {a.block_shape for a in self.amps}
        if len(shapes) != 1:
            raise ValueError(f"amplifier blocks differ in shape: {sorted(shapes)}")
        positions = [a.position for a in self.amps]
        if len(set(positions)) != len(positions):
            raise ValueError(f"two amplifiers share a grid position: {positions}")
        names = [a.name for a in self.amps]
        if len(set(names)) != len(names):
            raise ValueError(f"amplifier names repeat: {names}")

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(n_rows, n_cols)`` of the grid of blocks."""
        return (
            1 + max(a.position[1] for a in self.amps),
            1 + max(a.position[0] for a in self.amps),
        )

    @property
    def raw_shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the raw array."""
        ny, nx = self.amps[0].block_shape
        n_rows, n_cols = self.grid_shape
        return n_rows * ny, n_cols * nx

    def origin(self, amp: AmplifierDescription) -> tuple[int, int]:
        """``(y0, x0)`` raw corner of an amplifier's block."""
        ny, nx = amp.block_shape
        return amp.position[1] * ny, amp.position[0] * nx

    def detector_layout(self) -> DetectorLayout:
        """The geometry as a `DetectorLayout` (stored orientation, live rows, trimmed prescan).

        The assembled CCD places each amplifier's live imaging pixels at its grid position.
        """
        amps = []
        live_ny = {a.data_rows.stop - a.data_rows.start for a in self.amps}
        if len(live_ny) != 1:
            raise ValueError(f"amplifiers differ in live rows: {sorted(live_ny)}")
        ny_live = live_ny.pop()
        for amp in self.amps:
            origin = self.origin(amp)
            regions = {
                k: (amp.stored_region(v, origin) if v is not None else None)
                for k, v in amp.readout_regions().items()
            }
            ix, iy = amp.position
            amps.append(
                AmpGeometry(
                    name=amp.name,
                    data=regions["data"],
                    serial_overscan=regions["serial_overscan"],
                    parallel_overscan=regions["parallel_overscan"],
                    prescan=regions["prescan"],
                    assembled=(
                        slice(iy * ny_live, (iy + 1) * ny_live),
                        slice(ix * amp.data_cols, (ix + 1) * amp.data_cols),
                    ),
                    flip_x=amp.flip_x,
                )
            )
        n_rows, n_cols = self.grid_shape
        return DetectorLayout(
            amps=tuple(amps),
            raw_shape=self.raw_shape,
            assembled_shape=(n_rows * ny_live, n_cols * self.amps[0].data_cols),
        )


def read_amplifiers(raw: np.ndarray, grid: AmplifierGrid) -> dict[str, AmpReadout]:
    """Cut a raw array into its amplifiers, each oriented in readout order.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(ny, nx)`` raw pixels of one detector, as stored.
    grid : AmplifierGrid
        The detector's description (`CameraDescription.detector`).

    Returns
    -------
    dict of str to AmpReadout
        Per amplifier name, in header order; arrays are views of ``raw``.

    Raises
    ------
    ValueError
        If ``raw`` is not 2-d or its shape differs from the description's.
    """
    raw = np.asarray(raw)
    if raw.ndim != 2 or tuple(raw.shape) != grid.raw_shape:
        raise ValueError(
            f"raw must be 2-d of shape (ny, nx)={grid.raw_shape} as the description gives; "
            f"got {raw.shape}"
        )
    out = {}
    for amp in grid.amps:
        y0, x0 = grid.origin(amp)
        ny, nx = amp.block_shape
        block = raw[y0 : y0 + ny, x0 : x0 + nx]
        if amp.flip_y:
            block = block[::-1, :]
        if amp.flip_x:
            block = block[:, ::-1]
        regions = amp.readout_regions()

        def cut(
            key: str, _block: np.ndarray = block, _regions: dict = regions
        ) -> np.ndarray | None:
            region = _regions[key]
            return None if region is None else _block[region]

        live = np.ones(amp.data_cols, dtype=bool)
        live[list(amp.non_live_columns)] = False
        out[amp.name] = AmpReadout(
            name=amp.name,
            prescan=cut("prescan"),
            data=cut("data"),
            serial_overscan=cut("serial_overscan"),
            parallel_overscan=cut("parallel_overscan"),
            live_columns=live,
            block=block,
        )
    return out


@dataclass(frozen=True, slots=True)
class CameraDescription:
    """A camera description read from its YAML file (see the module docstring).

    Parameters
    ----------
    name : str
        Camera name (the ``instrument`` data-id key).
    detectors : tuple of AmplifierGrid
        Detector types.
    data_id : dict
        Data-id key -> source (as in the YAML).
    metadata : dict
        Registry column (obstype, exptime, mjd, airmass, ra_deg, dec_deg) -> source.
    companions : dict
        Companion kind -> ``{"file": format string, "match": {key: keyword}, "required": bool}``.
    file_pattern : re.Pattern
        Pattern a raw file's base name matches.
    path_pattern : re.Pattern or None
        Pattern searched in a raw's full path.
    hdu : int
        HDU holding the pixels.
    section_keywords : bool
        Whether the raws carry section keywords (then those win).
    source : str
        The YAML file read.
    """

    name: str
    detectors: tuple[AmplifierGrid, ...]
    data_id: Mapping[str, Mapping[str, Any]]
    metadata: Mapping[str, Mapping[str, Any]]
    companions: Mapping[str, Mapping[str, Any]]
    file_pattern: re.Pattern
    path_pattern: re.Pattern | None = None
    hdu: int = 0
    section_keywords: bool = False
    source: str = ""
    _by_id: Mapping[int, AmplifierGrid] = field(default_factory=dict, repr=False)

    def detector(self, ccd: int) -> AmplifierGrid:
        """The description of detector ``ccd``.

        Raises
        ------
        KeyError
            If the camera has no such detector.
        """
        try:
            return self._by_id[int(ccd)]
        except KeyError:
            raise KeyError(f"camera {self.name} has no detector {ccd}") from None

    def header_keywords(self) -> frozenset[str]:
        """Every primary-header keyword the data id and metadata read."""
        sources = list(self.data_id.values()) + list(self.metadata.values())
        return frozenset(s["header"] for s in sources if "header" in s)

    def companion_keywords(self) -> frozenset[str]:
        """Every companion header keyword compared with the raws."""
        return frozenset(k for c in self.companions.values() for k in c["match"].values())

    def matches(self, path: str) -> bool:
        """Whether a file's base name is a raw of this camera."""
        return self.file_pattern.match(Path(path).name) is not None

    def read_data_id(
        self, header: Mapping[str, Any], path: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The data id and registry metadata of one raw, from its header and path.

        Parameters
        ----------
        header : mapping
            Primary header (or the keywords `header_keywords` names).
        path : str
            The file's path (for the file-name and path patterns).

        Returns
        -------
        tuple of dict
            ``(data_id, metadata)``.

        Raises
        ------
        ValueError
            If the file name does not match, a keyword is missing or malformed, or a header
            value and a file-name value of one key disagree; the message names the keyword.
        """
        name_match = self.file_pattern.match(Path(path).name)
        if name_match is None:
            raise ValueError(f"file name does not match {self.file_pattern.pattern}")
        groups = dict(name_match.groupdict())
        if self.path_pattern is not None:
            found = self.path_pattern.search(str(path))
            if found is not None:
                groups.update({f"path:{k}": v for k, v in found.groupdict().items()})
        data_id: dict[str, Any] = {}
        packed = []
        for key, source in self.data_id.items():
            if "pack" in source:
                packed.append((key, source))
                continue
            data_id[key] = _resolve(key, source, header, groups)
        for key, source in packed:
            data_id[key] = _pack(key, source["pack"], data_id)
        metadata = {
            key: _resolve(key, source, header, groups) for key, source in self.metadata.items()
        }
        return data_id, metadata

    def companion_name(self, kind: str, data_id: Mapping[str, Any]) -> str:
        """Base name of a raw's companion of one kind.

        Raises
        ------
        KeyError
            If the kind is unknown or the data id lacks a key its file name needs.
        """
        spec = self.companions[kind]
        try:
            return spec["file"].format(**data_id)
        except KeyError as exc:
            raise KeyError(
                f"companion {kind} file name {spec['file']!r} needs data id key {exc.args[0]}"
            ) from None

    def companion_mismatches(
        self, kind: str, data_id: Mapping[str, Any], header: Mapping[str, Any]
    ) -> list[str]:
        """Keywords of a companion's header that disagree with the raw's data id.

        Returns
        -------
        list of str
            One ``"KEYWORD=companion value (raw key=raw value)"`` per difference; a missing
            keyword counts as a difference.
        """
        out = []
        for key, keyword in self.companions[kind]["match"].items():
            if keyword not in header:
                out.append(f"{keyword} missing (raw {key}={data_id.get(key)})")
                continue
            theirs = header[keyword]
            ours = data_id.get(key)
            same = _same(theirs, ours)
            if not same:
                out.append(f"{keyword}={_text(theirs)} (raw {key}={ours})")
        return out


def _text(value: Any) -> str:
    return str(value).strip() if isinstance(value, str) else str(value)


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return _text(a).lower() == _text(b).lower()


def _convert(key: str, raw_value: Any, source: Mapping[str, Any], origin: str) -> Any:
    kind = source.get("type", "str")
    try:
        if kind == "int":
            number = float(raw_value)
            if number != int(number):
                raise ValueError
            return int(number)
        if kind == "float":
            return float(raw_value) * float(source.get("scale", 1.0))
        if kind == "isot":
            from astropy.time import Time

            return float(Time(str(raw_value).strip().rstrip("Z"), format="isot", scale="utc").mjd)
    except (TypeError, ValueError):
        raise ValueError(f"{origin}={raw_value!r} is not a valid {kind} for {key}") from None
    text = _text(raw_value)
    return text.lower() if source.get("lower") else text


def _resolve(key: str, source: Mapping[str, Any], header: Mapping, groups: Mapping) -> Any:
    values = []
    if "value" in source:
        values.append(("value", _convert(key, source["value"], source, "value")))
    if "header" in source:
        keyword = source["header"]
        if keyword in header:
            values.append((keyword, _convert(key, header[keyword], source, keyword)))
        elif "default" in source:
            values.append((keyword, _convert(key, source["default"], source, keyword)))
        else:
            raise ValueError(f"missing header keyword {keyword} (data id key {key})")
    for kind, prefix in (("file", ""), ("path", "path:")):
        if kind in source:
            group = prefix + source[kind]
            if groups.get(group) is None:
                raise ValueError(f"the {kind} name gives no {source[kind]!r} (data id key {key})")
            values.append((f"{kind} name", _convert(key, groups[group], source, f"{kind} name")))
    if not values:
        raise ValueError(f"data id key {key} has no source")
    first_origin, first = values[0]
    for origin, value in values[1:]:
        if not _same(value, first):
            raise ValueError(f"{first_origin} gives {key}={first} but the {origin} gives {value}")
    return first


def _pack(key: str, parts: list[Mapping[str, Any]], data_id: Mapping[str, Any]) -> int:
    total = 0
    for part in parts:
        name = part["key"]
        if name not in data_id:
            raise ValueError(f"{key} packs data id key {name}, which the description lacks")
        value = data_id[name]
        if "values" in part:
            if str(value) not in part["values"]:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(part['values'])}")
            value = part["values"].index(str(value))
        value = int(value)
        span = int(part.get("span", 0))
        if span and not 0 <= value < span:
            raise ValueError(f"{name}={value} does not fit in {key} (must be in 0..{span - 1})")
        total = total * span + value if span else value
    return total


def _amplifier(entry: Mapping[str, Any], defaults: Mapping[str, Any]) -> AmplifierDescription:
    merged = {**defaults, **entry}
    required = ("name", "position", "rows", "prescan_cols", "data_cols", "overscan_cols")
    missing = [k for k in required if k not in merged]
    if missing:
        raise ValueError(
            f"amplifier {merged.get('name', '?')} lacks {', '.join(missing)} (and no default)"
        )
    return AmplifierDescription(
        name=str(merged["name"]),
        position=(int(merged["position"][0]), int(merged["position"][1])),
        rows=int(merged["rows"]),
        prescan_cols=int(merged["prescan_cols"]),
        data_cols=int(merged["data_cols"]),
        overscan_cols=int(merged["overscan_cols"]),
        parallel_overscan_rows=int(merged.get("parallel_overscan_rows", 0)),
        non_live_rows=int(merged.get("non_live_rows", 0)),
        non_live_columns=tuple(int(c) for c in merged.get("non_live_columns", ())),
        prescan_trim=tuple(int(c) for c in merged.get("prescan_trim", (0, 0))),
        flip_x=bool(merged.get("flip_x", False)),
        flip_y=bool(merged.get("flip_y", False)),
        gain_e_per_adu=float(merged.get("gain_e_per_adu", math.nan)),
        read_noise_e=float(merged.get("read_noise_e", math.nan)),
    )


def camera_from_mapping(document: Mapping[str, Any], *, source: str = "") -> CameraDescription:
    """Build a description from a parsed YAML document, after checking it against the schema.

    Raises
    ------
    ValueError
        If the document breaks the schema or its geometry is inconsistent; the message names
        the source file and the offending entry.
    """
    schema = yaml.safe_load(_SCHEMA_PATH.read_text())
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(document), key=lambda e: list(e.path)
    )
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top)"
        raise ValueError(f"{source}: camera description invalid at {where}: {errors[0].message}")
    try:
        grids = []
        by_id: dict[int, AmplifierGrid] = {}
        for det in document["detectors"]:
            ids = list(det.get("ids", ()))
            if "id_range" in det:
                first, last = det["id_range"]
                ids += list(range(first, last + 1))
            defaults = det.get("amplifier_defaults", {})
            grid = AmplifierGrid(
                ids=tuple(ids), amps=tuple(_amplifier(a, defaults) for a in det["amplifiers"])
            )
            for ccd in ids:
                if ccd in by_id:
                    raise ValueError(f"detector {ccd} is described twice")
                by_id[ccd] = grid
            grids.append(grid)
        for key, spec in document["data_id"].items():
            given = [k for k in _SOURCE_KINDS if k in spec]
            if not given or (len(given) > 1 and not set(given) <= {"header", "file", "path"}):
                raise ValueError(f"data_id {key} needs one source of {', '.join(_SOURCE_KINDS)}")
        raw = document["raw"]
        return CameraDescription(
            name=document["name"],
            detectors=tuple(grids),
            data_id=dict(document["data_id"]),
            metadata=dict(document.get("metadata", {})),
            companions={
                k: {"required": True, **v} for k, v in document.get("companions", {}).items()
            },
            file_pattern=re.compile(raw["file_pattern"]),
            path_pattern=re.compile(raw["path_pattern"]) if "path_pattern" in raw else None,
            hdu=int(raw.get("hdu", 0)),
            section_keywords=bool(raw.get("section_keywords", False)),
            source=source,
            _by_id=by_id,
        )
    except (ValueError, re.error) as exc:
        raise ValueError(f"{source}: camera description invalid: {exc}") from None


def load_camera(name_or_path: str | Path) -> CameraDescription:
    """Read a camera description: a shipped camera's name (``esis1``) or a YAML file's path.

    Raises
    ------
    FileNotFoundError
        If there is no such camera or file (the message lists the shipped cameras).
    ValueError
        If the description is invalid (the message names the file and the entry).
    """
    text = str(name_or_path)
    path = Path(text) if text.endswith((".yaml", ".yml")) else CAMERA_DIR / f"{text}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no camera description {path} (shipped: {', '.join(camera_names())})"
        )
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    return camera_from_mapping(document, source=str(path))
