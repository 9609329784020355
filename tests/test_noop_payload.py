"""The noop payload: same DAG as the full payload, every output a whole placeholder."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from noop_campaigns import write_noop_campaign

from dcflow.orchestration.campaign_files import REPO_ROOT, open_campaign
from dcflow.orchestration.snakemake_cli import run_snakemake, snakemake_dry_run_counts
from dcflow.pipeline.graph import JobGraph

pytestmark = pytest.mark.slow


def _dry_run_counts(config: Path) -> dict[str, int]:
    return snakemake_dry_run_counts(config)


def _set_payload(config: Path, payload: str) -> None:
    data = yaml.safe_load(config.read_text())
    data["campaign"]["payload"] = payload
    config.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Path:
    return write_noop_campaign(tmp_path_factory.mktemp("noop"))


def test_noop_dag_equals_full_dag(campaign):
    noop = _dry_run_counts(campaign)
    _set_payload(campaign, "full")
    try:
        full = _dry_run_counts(campaign)
    finally:
        _set_payload(campaign, "noop")
    _, _, planned = open_campaign(campaign)
    expected = dict(Counter(job.rule for job in JobGraph(planned).job_specs()))
    assert noop == full == expected
    assert {"make_warp", "forced_photometry", "fe55_gain", "science_validation"} <= set(noop)


def test_noop_run_writes_every_output_as_a_placeholder(campaign):
    code = run_snakemake(
        campaign, profile="local", snakemake_args=["--quiet", "rules"], workdir=campaign.parent
    )
    assert code == 0
    _, _, planned = open_campaign(campaign)
    jobs = [job for job in JobGraph(planned).job_specs() if job.rule != "all"]
    for job in jobs:
        for output in job.outputs:
            record = json.loads(Path(output).read_text())
            assert record["rule"] == job.rule, output
            assert record["output"] == output
            assert record["wildcards"] == {k: str(v) for k, v in job.data_id.items()}
    logs = sorted(Path(planned.layout.output_root, "logs").rglob("*.log"))
    assert len(logs) == len(jobs)
    assert all("placeholder(s)" in p.read_text() for p in logs)
    # atomic writes leave no temporary file behind; nothing but placeholders in products
    output_root = Path(planned.layout.output_root)
    assert not [p for p in output_root.rglob("*") if p.name.endswith(".tmp")]
    outputs = {output for job in jobs for output in job.outputs}
    products = {
        str(p)
        for p in output_root.rglob("*")
        if p.is_file()
        and p.parts[len(output_root.parts)] not in ("logs", "benchmarks", ".dcflow")
        and not p.name.startswith("registry.sqlite3")
    }
    assert products == {o for o in outputs if o.startswith(str(output_root) + "/")}


def test_noop_main_writes_atomically(tmp_path):
    spec = importlib.util.spec_from_file_location("noop", REPO_ROOT / "scripts/noop.py")
    noop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(noop)
    out = tmp_path / "a" / "b.fits"
    noop.main(rule="make_warp", wildcards={"visit": "1"}, outputs=[str(out)], n_inputs=3)
    assert json.loads(out.read_text())["wildcards"] == {"visit": "1"}
    assert [p.name for p in out.parent.iterdir()] == ["b.fits"]
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(OSError, match="file"):
        noop.main(rule="r", wildcards={}, outputs=[str(blocked / "x.fits")], n_inputs=0)


@pytest.mark.parametrize(
    ("corruption", "message"),
    [
        ("truncated", "unreadable or truncated FITS"),
        ("missing_key", "missing header keyword.*FILTER"),
        ("nan_amplifier", "HDU AMP_B has non-finite .* all 128 pixels"),
    ],
)
def test_noop_fails_on_a_corrupt_raw_naming_it(tmp_path, corruption, message):
    """A corrupt raw input fails the noop job as a stage would: InputDataError naming it."""
    import numpy as np
    from astropy.io import fits

    from dcflow.errors import InputDataError

    spec = importlib.util.spec_from_file_location("noop", REPO_ROOT / "scripts/noop.py")
    noop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(noop)
    header = fits.Header(
        {"INSTRUME": "cfht_sim", "EXPNUM": 7, "CCDNUM": 0, "OBSTYPE": "OBJECT", "FILTER": "g",
         "EXPTIME": 60.0, "MJD-OBS": 60000.0}
    )  # fmt: skip
    raw = tmp_path / "raw_7_0.fits"
    amps = [np.ones((8, 16), np.float32), np.ones((8, 16), np.float32)]
    if corruption == "nan_amplifier":
        amps[1][:] = np.nan
    if corruption == "missing_key":
        del header["FILTER"]
    fits.HDUList(
        [fits.PrimaryHDU(header=header)]
        + [fits.ImageHDU(a, name=f"AMP_{n}") for a, n in zip(amps, "AB", strict=True)]
    ).writeto(raw)
    if corruption == "truncated":
        raw.write_bytes(raw.read_bytes()[:1000])
    out = tmp_path / "calexp.fits"
    with pytest.raises(InputDataError, match=message) as caught:
        noop.main(
            rule="process_visit", wildcards={}, outputs=[str(out)], n_inputs=1, raws=[str(raw)]
        )
    assert str(raw) in str(caught.value) and not out.exists()
    assert noop.raw_inputs("process_visit", {"raws": [str(raw)], "refcat": "r"}) == [str(raw)]


def test_a_noop_job_without_a_raw_to_check_imports_no_astropy(tmp_path):
    """astropy is about 0.4 s of CPU per job: only a job with a raw to check imports it."""
    stand_in = tmp_path / "raw_1_0.fits"  # empty: a scale campaign's stand-in, not checked
    stand_in.touch()
    out = tmp_path / "warp.fits"
    code = (
        "import runpy, sys\n"
        f"noop = runpy.run_path({str(REPO_ROOT / 'scripts/noop.py')!r})\n"
        f"noop['main'](rule='make_warp', wildcards={{}}, outputs=[{str(out)!r}], n_inputs=1,"
        f" raws=[{str(stand_in)!r}])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('astropy', 'numpy')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    assert json.loads(out.read_text())["rule"] == "make_warp"
