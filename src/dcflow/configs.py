"""Stage configs as frozen dataclasses whose fields document themselves.

Every field is declared with `config_field`, which records its doc (with unit), bounds and
allowed choices. `check_fields` enforces them in ``__post_init__``; `dataclass_schema`
turns the same metadata into the JSON-schema section of workflow/schemas/config.schema.yaml,
so the schema and the dataclass cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

__all__ = ["check_fields", "config_field", "dataclass_schema", "from_mapping"]


def config_field(
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    choices: Mapping[str, str] | None = None,
) -> Any:
    """Declare a config field with its default, its doc (with unit) and its bounds.

    Parameters
    ----------
    default : object
        The default value (lists and dicts are copied per instance; use tuples in dataclasses).
    doc : str
        What the field does, with its unit.
    minimum, maximum, exclusive_minimum : float, optional
        Inclusive / exclusive bounds on a number (or on every item of a tuple of numbers).
    choices : mapping of str to str, optional
        Allowed values, each with what it means.
    """
    metadata = {"doc": doc}
    for key, value in (
        ("minimum", minimum),
        ("maximum", maximum),
        ("exclusiveMinimum", exclusive_minimum),
    ):
        if value is not None:
            metadata[key] = value
    if choices is not None:
        metadata["choices"] = dict(choices)
    return dataclasses.field(default=default, metadata=metadata)


def _check_value(cls_name: str, name: str, value: Any, meta: Mapping) -> None:
    items = value if isinstance(value, tuple | list) else (value,)
    for item in items:
        if "choices" in meta and item not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise ValueError(f"{cls_name}.{name} must be one of {allowed}; got {item!r}")
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue
        if "minimum" in meta and item < meta["minimum"]:
            raise ValueError(f"{cls_name}.{name} must be >= {meta['minimum']}; got {item!r}")
        if "maximum" in meta and item > meta["maximum"]:
            raise ValueError(f"{cls_name}.{name} must be <= {meta['maximum']}; got {item!r}")
        if "exclusiveMinimum" in meta and item <= meta["exclusiveMinimum"]:
            raise ValueError(
                f"{cls_name}.{name} must be > {meta['exclusiveMinimum']}; got {item!r}"
            )


def check_fields(instance: Any) -> None:
    """Raise ValueError naming the field if any value breaks its declared bounds or choices."""
    for field in dataclasses.fields(instance):
        _check_value(
            type(instance).__name__, field.name, getattr(instance, field.name), field.metadata
        )


def from_mapping(cls: type, values: Mapping[str, Any] | None) -> Any:
    """Build a config dataclass from a config-file mapping (lists become tuples).

    Raises
    ------
    ValueError
        If a key is not a field of ``cls``.
    """
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {', '.join(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _json_type(annotation: Any) -> dict:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [_json_type(a) for a in typing.get_args(annotation)]
        return {"anyOf": options}
    if origin is tuple:
        args = typing.get_args(annotation)
        item = _json_type(args[0]) if args else {}
        return {"type": "array", "items": item}
    if annotation is type(None):
        return {"type": "null"}
    return {
        bool: {"type": "boolean"},
        int: {"type": "integer"},
        float: {"type": "number"},
        str: {"type": "string"},
    }.get(annotation, {})


def dataclass_schema(cls: type) -> dict:
    """JSON-schema object for a config dataclass, from its fields' metadata."""
    hints = typing.get_type_hints(cls)
    properties = {}
    for field in dataclasses.fields(cls):
        meta = field.metadata
        prop = _json_type(hints[field.name])
        doc = meta.get("doc", "")
        if "choices" in meta:
            prop_enum = list(meta["choices"])
            meaning = "; ".join(f"{k}: {v}" for k, v in meta["choices"].items())
            doc = f"{doc} ({meaning})"
            if prop.get("type") == "array":
                prop["items"] = {**prop["items"], "enum": prop_enum}
            else:
                prop["enum"] = prop_enum
        target = prop["items"] if prop.get("type") == "array" else prop
        for key in ("minimum", "maximum", "exclusiveMinimum"):
            if key in meta:
                target[key] = meta[key]
        default = field.default
        prop["description"] = doc
        prop["default"] = list(default) if isinstance(default, tuple) else default
        properties[field.name] = prop
    return {"type": "object", "additionalProperties": False, "properties": properties}
