"""The one place that turns a dataset type and a data id into a path.

Templates are relative to a root: ``raw`` datasets (and what the instrument writes beside
them) live under the campaign's input root, everything else under its output root. A field
may carry a format spec (``{run:06d}``, ``{field:04d}``): paths are formatted with it, and
the Snakemake pattern of a template drops it (``{run}``).

`check_templates` checks, when a config is loaded, that every template uses only the keys its
dataset has: an input dataset of the camera (raw, SDSS companions) the keys of the camera's
description, a product the keys of its default template.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from dcflow.dataids import DATA_ID_KEYS, INT_KEYS, normalize_data_id
from dcflow.instruments.camera import load_camera

__all__ = ["CAMERA_DATASETS", "DEFAULT_TEMPLATES", "INPUT_DATASETS", "Layout", "check_templates"]

DEFAULT_TEMPLATES: dict[str, str] = {
    "raw": "{instrument}/raw/{visit}/raw_{visit}_{ccd}.fits",
    "refcat": "{instrument}/refcat.fits",
    "truth": "{instrument}/truth.fits",
    "registry": "registry.sqlite3",
    "sim_manifest": "simulated_files.txt",
    "ledger": "ledger.sqlite3",
    "index_cache": ".dcflow/index.npz",
    "plan_snapshot": ".dcflow/plan.npz",
    "bias": "calib/bias/bias_{ccd}.fits",
    "flat": "calib/flat/{filter}/flat_{filter}_{ccd}.fits",
    "calexp": "calexp/{visit}/calexp_{visit}_{ccd}.fits",
    "src": "src/{visit}/src_{visit}_{ccd}.fits",
    "warp": "warp/{tract}/{patch}/{visit}/warp_{tract}_{patch}_{visit}.fits",
    "deepCoadd": "deepCoadd/{filter}/{tract}/{patch}/deepCoadd_{filter}_{tract}_{patch}.fits",
    "templateCoadd": (
        "templateCoadd/{filter}/{tract}/{patch}/templateCoadd_{filter}_{tract}_{patch}.fits"
    ),
    "templateCoadd_otherNights": (
        "templateCoadd/{filter}/{tract}/{patch}/"
        "templateCoadd_otherNights_{filter}_{tract}_{patch}.fits"
    ),
    "deepCoadd_det": "deepCoadd_det/{tract}/{patch}/deepCoadd_det_{tract}_{patch}.fits",
    "object": "object/{tract}/{patch}/object_{tract}_{patch}.fits",
    "forced_src": "forced_src/{visit}/forced_src_{visit}_{ccd}.fits",
    "deepDiff": "deepDiff/{visit}/deepDiff_{visit}_{ccd}.fits",
    "diaSrc": "diaSrc/{visit}/diaSrc_{visit}_{ccd}.fits",
    "diffim_plot": "validate/diffim/diffim_{visit}.png",
    "diaObject": "diaObject/{tract}/{patch}/diaObject_{tract}_{patch}.fits",
    "diaSourceTable": "diaSourceTable/{tract}/{patch}/diaSourceTable_{tract}_{patch}.fits",
    "diaTracklet": "diaTracklet/{tract}/{patch}/diaTracklet_{tract}_{patch}.fits",
    "process_ccd_metrics": "validate/process_ccd/{visit}.json",
    "science_validation": "validate/science_validation.json",
    "science_validation_plot": "validate/science_validation.png",
    "fe55_raw": "fe55/raw/{ccd}/fe55_raw_{ccd}_{exposure}.fits",
    "fe55_truth": "fe55/truth/{ccd}/fe55_truth_{ccd}_{exposure}.fits",
    "fe55_flat": "fe55/flat/{ccd}/fe55_flat_{ccd}_{exposure}.fits",
    "fe55_bias": "fe55/bias/{ccd}/fe55_bias_{ccd}_{exposure}.fits",
    "fe55_gain": "fe55/gain/{ccd}/fe55_gain_{ccd}_{exposure}.fits",
    "fe55_events": "fe55/events/{ccd}/fe55_events_{ccd}_{exposure}.fits",
    "fe55_plot": "fe55/plots/{ccd}/fe55_hist_{ccd}_{exposure}.png",
    "fe55_ptc": "fe55/ptc/fe55_ptc_{ccd}.fits",
    "fe55_ptc_plot": "fe55/plots/{ccd}/fe55_ptc_{ccd}.png",
    "fe55_summary": "fe55/summary/fe55_summary_{ccd}.fits",
    "fe55_summary_plot": "fe55/plots/{ccd}/fe55_summary_{ccd}.png",
    "sdss_mask": "{instrument}/objcs/{ccd}/fpM_{visit}_{ccd}.fit",
    "sdss_psfield": "{instrument}/objcs/{ccd}/psField_{visit}_{ccd}.fit",
    "sdss_tsfield": "{instrument}/calibChunks/{ccd}/tsField_{visit}_{ccd}.fit",
    "catalog_db": "db/catalogs",
    "catalog_load_visit": "db/loaded/visit/catalog_load_{visit}.json",
    "catalog_load_patch": "db/loaded/patch/{tract}/catalog_load_{tract}_{patch}.json",
    "log": "logs/{rule}/{tile}.log",
    "benchmark": "benchmarks/{rule}/{tile}.tsv",
}
"""Default path templates, one per dataset type; config.yaml's ``layout.templates`` overrides."""

INPUT_DATASETS = frozenset(
    {"raw", "refcat", "truth", "sim_manifest"}
    | {"fe55_raw", "fe55_truth", "fe55_flat", "fe55_bias"}
    | {"sdss_mask", "sdss_psfield", "sdss_tsfield"}
)
"""Dataset types that live under the input root (the instrument's data), not the output root."""

CAMERA_DATASETS = frozenset({"raw", "sdss_mask", "sdss_psfield", "sdss_tsfield"})
"""Input datasets named by the camera's data-id keys (its description's ``data_id``)."""

_FIXED_KEYS = {
    "refcat": {"instrument"},
    "truth": {"instrument"},
    "registry": set(),
    "sim_manifest": set(),
    "ledger": set(),
    "catalog_db": set(),
    "log": {"rule", "tile"},
    "benchmark": {"rule", "tile"},
}


def _parse(template: str) -> list[tuple[str, str | None, str]]:
    return [(text, name, spec) for text, name, spec, _ in string.Formatter().parse(template)]


def check_templates(
    templates: Mapping[str, str], camera_keys: Iterable[str], *, camera: str = "the camera"
) -> list[str]:
    """Problems of a campaign's path templates: one line per template and unknown key.

    Parameters
    ----------
    templates : mapping of str to str
        Dataset type -> template (defaults already merged).
    camera_keys : iterable of str
        Data-id keys of the camera's raws (its description's ``data_id`` keys).
    camera : str
        The camera's name, for the messages.

    Returns
    -------
    list of str
        Empty when every template is usable; else e.g. ``layout.templates.calexp uses {run},
        which calexp does not have (it has ccd, instrument, visit)``. A format spec that does
        not fit an integer key (``{run:s}``) is reported too.
    """
    problems = []
    camera_keys = set(camera_keys) | {"instrument"}
    for dataset, template in templates.items():
        if dataset in CAMERA_DATASETS:
            allowed, owner = camera_keys, f"the raws of {camera}"
        elif dataset in _FIXED_KEYS:
            allowed, owner = _FIXED_KEYS[dataset], dataset
        elif dataset.startswith("fe55_"):
            allowed, owner = {"instrument", "ccd", "exposure"}, dataset
        elif dataset in DEFAULT_TEMPLATES:
            allowed = {n for _, n, _ in _parse(DEFAULT_TEMPLATES[dataset]) if n} | {"instrument"}
            owner = dataset
        else:
            problems.append(f"layout.templates.{dataset}: unknown dataset type")
            continue
        try:
            fields = _parse(template)
        except ValueError as exc:
            problems.append(f"layout.templates.{dataset} {template!r}: {exc}")
            continue
        for _, name, spec in fields:
            if name is None:
                continue
            if name not in allowed:
                problems.append(
                    f"layout.templates.{dataset} {template!r} uses {{{name}}}, which "
                    f"{owner} do{'es' if owner == dataset else ''} not have "
                    f"(known: {', '.join(sorted(allowed)) or 'none'})"
                )
            elif spec:
                sample = 1 if name in INT_KEYS else "r"
                try:
                    format(sample, spec)
                except ValueError as exc:
                    problems.append(
                        f"layout.templates.{dataset} {template!r}: format spec {{{name}:{spec}}} "
                        f"does not fit {name} ({exc})"
                    )
    return problems


@dataclass(frozen=True, slots=True)
class Layout:
    """Path templates of one campaign.

    Parameters
    ----------
    input_root : str
        Directory holding raw data and the instrument's reference and truth catalogs.
    output_root : str
        Directory receiving every product of the campaign.
    templates : dict of str
        Dataset type to template, relative to its root.
    """

    input_root: str
    output_root: str
    templates: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))

    @classmethod
    def from_config(cls, config: Mapping) -> Layout:
        """Build the layout from a validated campaign config (its ``layout`` section)."""
        section = config.get("layout", {})
        templates = dict(DEFAULT_TEMPLATES)
        templates.update(section.get("templates", {}))
        instrument = config.get("campaign", {}).get("instrument")
        if instrument:
            try:
                keys: Iterable[str] = load_camera(instrument).data_id
            except FileNotFoundError:  # an instrument without a description (synthetic runs)
                keys = DATA_ID_KEYS
            problems = check_templates(templates, keys, camera=str(instrument))
            if problems:
                raise ValueError("; ".join(problems))
        return cls(
            input_root=str(section.get("input_root", "results/demo/input")),
            output_root=str(section.get("output_root", "results/demo")),
            templates=templates,
        )

    def fields(self, dataset_type: str) -> tuple[str, ...]:
        """Names of the fields a dataset type's template needs (each once, in order)."""
        names = [name for _, name, _ in _parse(self._template(dataset_type)) if name]
        return tuple(dict.fromkeys(names))

    def pattern(self, dataset_type: str, **fixed: object) -> str:
        """The rooted template, with ``fixed`` fields filled and the others left as ``{key}``.

        This is what Snakemake rules use as input/output patterns; format specs apply to the
        fixed fields and are dropped from the others.
        """
        values = normalize_data_id_loose(fixed)
        out = []
        for text, name, spec in _parse(self._rooted(dataset_type)):
            out.append(text)
            if name is None:
                continue
            if name in values:
                out.append(format(values[name], spec or ""))
            else:
                out.append("{" + name + "}")
        return "".join(out)

    def path(self, dataset_type: str, **data_id: object) -> str:
        """The path of one dataset.

        Raises
        ------
        KeyError
            If the dataset type is unknown or the data id lacks a field the template needs.
        """
        values = normalize_data_id_loose(data_id)
        missing = [name for name in self.fields(dataset_type) if name not in values]
        if missing:
            raise KeyError(f"{dataset_type} path needs data id key(s) {', '.join(missing)}")
        return self._rooted(dataset_type).format(**values)

    def _template(self, dataset_type: str) -> str:
        try:
            return self.templates[dataset_type]
        except KeyError:
            known = ", ".join(sorted(self.templates))
            raise KeyError(f"unknown dataset type {dataset_type!r} (known: {known})") from None

    def _rooted(self, dataset_type: str) -> str:
        root = self.input_root if dataset_type in INPUT_DATASETS else self.output_root
        return str(PurePosixPath(root) / self._template(dataset_type))


def normalize_data_id_loose(values: Mapping[str, object]) -> dict[str, object]:
    """Normalize data id keys; pass through the non-data-id fields (``rule``, ``tile``)."""
    ids = {k: v for k, v in values.items() if k not in ("rule", "tile")}
    out: dict[str, object] = dict(normalize_data_id(ids))
    for key in ("rule", "tile"):
        if key in values:
            out[key] = values[key]
    return out
