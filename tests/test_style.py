"""The style guide's self-checks (STYLE.md), run as tests so CI enforces them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PY_TREES = ["src", "tests", "scripts", "benchmarks"]


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)


def test_ruff_check_is_clean():
    result = _run(str(BIN / "ruff"), "check", "--output-format", "concise", *PY_TREES)
    assert result.returncode == 0, result.stdout[-3000:]


def test_ruff_format_is_clean():
    result = _run(str(BIN / "ruff"), "format", "--check", *PY_TREES)
    assert result.returncode == 0, result.stdout[-3000:]


def test_snakefmt_is_clean():
    result = _run(str(BIN / "snakefmt"), "--check", "Snakefile", "rules")
    assert result.returncode == 0, result.stderr[-3000:]


def test_snakefile_is_a_table_of_contents():
    text = (REPO / "Snakefile").read_text()
    assert not re.search(r"^\s*def ", text, re.M)
    assert "run:" not in text and "shell:" not in text


def test_only_common_smk_defines_functions_and_no_lambdas():
    for smk in (REPO / "rules").glob("*.smk"):
        text = smk.read_text()
        if smk.name != "common.smk":
            assert not re.search(r"^def ", text, re.M), smk.name
        assert "lambda" not in text, smk.name
        assert '"|".join' not in text, smk.name
        assert "results/" not in text, smk.name


def test_scripts_are_thin():
    for script in (REPO / "scripts").glob("*.py"):
        text = script.read_text()
        assert not re.search(r"^\s*(import|from)\s+(numpy|scipy)\b", text, re.M), script.name
        assert "results/" not in text, script.name
        main = re.search(r"^def main\(.*?(?=^\S)", text, re.M | re.S)
        if main:
            assert "snakemake" not in main.group(0), f"{script.name}: main mentions snakemake"


def test_stages_do_no_io():
    pattern = re.compile(r"\bopen\(|fits\.open|snakemake|os\.environ|\bprint\(")
    for module in (REPO / "src" / "dcflow" / "stages").glob("*.py"):
        hits = [line for line in module.read_text().splitlines() if pattern.search(line)]
        assert hits == [], f"{module.name}: {hits}"


def test_no_shell_true():
    for module in (REPO / "src").rglob("*.py"):
        assert "shell=True" not in module.read_text(), module


@pytest.mark.slow
def test_snakemake_lint_is_clean(tmp_path):
    """`snakemake --lint` on the default campaign (a registry is needed to build the rules)."""
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["layout"] = {"input_root": str(tmp_path / "in"), "output_root": str(tmp_path / "out")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    from dcflow.campaign.registry import ingest

    ingest([], tmp_path / "out" / "registry.sqlite3")
    result = _run(
        str(BIN / "snakemake"),
        "--lint",
        "--configfile",
        str(tmp_path / "config.yaml"),
        "-d",
        str(tmp_path),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
