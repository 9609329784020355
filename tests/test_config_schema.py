"""The config schema: generated from the stage dataclasses, and every shipped config valid."""

from __future__ import annotations

import dataclasses
import glob
import importlib
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from dcflow.config_schema import SECTIONS, build_schema, load_config, schema_path

REPO = Path(__file__).resolve().parents[1]


def test_checked_in_schema_is_the_generated_one():
    assert yaml.safe_load(schema_path().read_text()) == yaml.safe_load(
        yaml.safe_dump(build_schema(), sort_keys=False)
    ), "run `python -m dcflow.config_schema` after changing a config dataclass"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_schema_section_matches_its_dataclass(section):
    module, name = SECTIONS[section].split(":")
    cls = getattr(importlib.import_module(module), name)
    properties = build_schema()["properties"][section]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    assert set(properties) == set(fields)
    for key, default in fields.items():
        expected = list(default) if isinstance(default, tuple) else default
        assert properties[key]["default"] == expected, key
        assert properties[key]["description"], f"{section}.{key} has no description"


SHIPPED = sorted({str(REPO / "config.yaml"), *glob.glob(str(REPO / "config" / "*.yaml"))})


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: Path(p).name)
def test_every_shipped_config_validates(path):
    config = load_config(path)
    assert config["campaign"]["instrument"] in ("cfht_sim", "sdss")


def test_misspelt_key_is_named(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["process_ccd"] = {"detection_treshold_sigma": 5}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"bad\.yaml: invalid config at process_ccd.*treshold"):
        load_config(path)


def test_out_of_range_value_is_named(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["simulation"]["n_ccds"] = 99
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"invalid config at simulation/n_ccds: 99 is greater"):
        load_config(path)


def _names(requirements):
    return {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_conda_envs_name_the_pyproject_dependencies():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = _names(pyproject["project"]["dependencies"]) - {
        n for n in _names(pyproject["project"]["dependencies"]) if n.startswith("snakemake")
    }
    env = yaml.safe_load((REPO / "envs" / "pipeline.yaml").read_text())
    listed = _names(d for d in env["dependencies"] if isinstance(d, str)) - {"python"}
    assert listed == wanted
