"""An SDSS campaign of several runs: data ids with run and field, templates checked at load.

Real files: the shared run 6377 and a copy relabelled as run 6378 (RUN and the date changed in
every header, file names renamed), plus a run 6379 whose r-band fpM still says RUN 6377.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from sdss_runs import SHARED_RUN, relabel_run, shared_run_copy

from dcflow.campaign.index import CampaignIndex
from dcflow.errors import ConfigInvalidError
from dcflow.layout import Layout, check_templates
from dcflow.orchestration.campaign_files import load_campaign_config
from dcflow.orchestration.prepare import ingest_campaign, ingest_files
from dcflow.pipeline.graph import JobGraph

REPO = Path(__file__).resolve().parents[1]
DCFLOW = Path(sys.executable).parent / "dcflow"
TEMPLATES = {
    "raw": "{run}/{rerun}/corr/{camcol}/fpC-{run:06d}-{filter}{camcol}-{field:04d}.fit.gz",
    "sdss_mask": "{run}/{rerun}/objcs/{camcol}/fpM-{run:06d}-{filter}{camcol}-{field:04d}.fit",
    "sdss_psfield": "{run}/{rerun}/objcs/{camcol}/psField-{run:06d}-{camcol}-{field:04d}.fit",
    "sdss_tsfield": (
        "{run}/{rerun}/calibChunks/{camcol}/tsField-{run:06d}-{camcol}-{rerun}-{field:04d}.fit"
    ),
    "refcat": "ref_stars.fits",
}

pytestmark = pytest.mark.skipif(not SHARED_RUN.exists(), reason=f"{SHARED_RUN} absent")


def _config(root: Path, templates: dict) -> Path:
    config = yaml.safe_load((REPO / "config" / "sdss-stripe82.yaml").read_text())
    config["layout"] = {
        "input_root": str(root / "in"),
        "output_root": str(root / "out"),
        "templates": templates,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_format_specs_fill_paths_and_drop_from_patterns():
    layout = Layout("in", "out", {"raw": TEMPLATES["raw"]})
    assert layout.fields("raw") == ("run", "rerun", "camcol", "filter", "field")
    path = layout.path("raw", run=6377, rerun=40, camcol=4, filter="r", field=399)
    assert path == "in/6377/40/corr/4/fpC-006377-r4-0399.fit.gz"
    assert layout.pattern("raw", run=6378) == (
        "in/6378/{rerun}/corr/{camcol}/fpC-006378-{filter}{camcol}-{field}.fit.gz"
    )
    with pytest.raises(KeyError, match=r"raw path needs data id key\(s\) rerun, camcol, field'$"):
        layout.path("raw", run=6377, filter="r")


def test_templates_are_checked_against_the_instruments_keys(tmp_path):
    assert check_templates(TEMPLATES, ["run", "rerun", "camcol", "field", "filter"]) == []
    bad = _config(tmp_path, {**TEMPLATES, "calexp": "calexp/{run}/calexp_{visit}_{ccd}.fits"})
    with pytest.raises(ConfigInvalidError) as info:
        load_campaign_config(bad)
    message = str(info.value)
    assert message.startswith(str(bad))
    assert "layout.templates.calexp 'calexp/{run}/calexp_{visit}_{ccd}.fits' uses {run}" in message
    bad = _config(tmp_path, {**TEMPLATES, "raw": "{run}/fpC-{run:06d}-{stripe}.fit.gz"})
    with pytest.raises(
        ConfigInvalidError,
        match=r"layout.templates.raw .* uses \{stripe\}, which the raws of sdss do not have",
    ):
        load_campaign_config(bad)
    bad = _config(tmp_path, {**TEMPLATES, "raw": "{run:06s}/x.fit"})
    with pytest.raises(ConfigInvalidError, match=r"format spec \{run:06s\} does not fit run"):
        load_campaign_config(bad)
    # the simulated camera has no run: the same template is refused for cfht_sim
    sim = yaml.safe_load(bad.read_text())
    sim["campaign"]["instrument"] = "cfht_sim"
    sim["layout"]["templates"] = {"raw": TEMPLATES["raw"]}
    bad.write_text(yaml.safe_dump(sim))
    with pytest.raises(ConfigInvalidError, match=r"uses \{run\}, which the raws of cfht_sim"):
        load_campaign_config(bad)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_two_runs_from_one_config_through_ingest_and_run(tmp_path):
    inputs = tmp_path / "in"
    shared_run_copy(inputs)
    relabel_run(inputs, 6378)
    relabel_run(inputs, 6379, keep_run_in=("fpM-006379-r",))
    shutil.copyfile(SHARED_RUN.parent / "ref_stars.fits", inputs / "ref_stars.fits")
    config = _config(tmp_path, TEMPLATES)
    summary = ingest_files(config, [inputs], workers=2)
    assert (summary.n_raws, summary.n_added) == (15, 14)
    ((rejected, reason),) = summary.rejected
    assert rejected.endswith("fpC-006379-r4-0399.fit.gz") and "RUN=6377 (raw run=6379)" in reason

    before = _digests(inputs)
    argv = [str(DCFLOW), "run", "--config", str(config), "--profile", "local", "--verbose"]
    dry = subprocess.run(
        [*argv, "--", "-n", "--cores", "2"], capture_output=True, text=True, cwd=tmp_path
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    snakemake_jobs = int(
        re.search(r"^process_visit\s+(\d+)$", dry.stdout + dry.stderr, re.M).group(1)
    )
    plan = subprocess.run(
        [str(DCFLOW), "plan", "--config", str(config), "--json", "--no-pictures"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    planned = json.loads(plan.stdout)["to_run_by_rule"]["process_visit"]
    assert planned == snakemake_jobs == 14
    # every job reads the companions of its own run
    for match in re.finditer(r"input: (.*fpC-(\d{6})-.*)$", dry.stdout, re.M):
        files = match.group(1).split(", ")
        assert all(f"-{match.group(2)}-" in Path(f).name for f in files[:4]), files

    run = subprocess.run(
        [*argv, "--", "--cores", "2"], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert _digests(inputs) == before  # real input frames survive the run byte for byte
    zero_points = {}
    for run_number, bands in ((6377, "ugriz"), (6378, "ugriz"), (6379, "ugiz")):
        for index, band in enumerate("ugriz"):
            visit = (run_number * 10000 + 399) * 10 + index
            calexp = tmp_path / "out" / "calexp" / str(visit) / f"calexp_{visit}_4.fits"
            if band not in bands:
                assert not calexp.exists()
                continue
            header = fits.getheader(calexp, 0)
            assert (header["RUN"], header["FILTER"]) == (run_number, band)
            assert header["DATE-OBS"] == ("2006-09-20" if run_number == 6377 else "2006-09-21")
            src = Table.read(tmp_path / "out" / "src" / str(visit) / f"src_{visit}_4.fits")
            zero_points[run_number, band] = (header["ZP"], len(src))
    # the relabelled runs hold the same pixels: the same zero points and source counts
    for band in "ugriz":
        assert zero_points[6378, band] == zero_points[6377, band]
        assert zero_points[6377, band][1] > 50  # measured: u 81, g-z 400-700


def test_template_ingest_fills_companion_templates_from_run_and_field(tmp_path):
    inputs = tmp_path / "in"
    shared_run_copy(inputs)
    relabel_run(inputs, 6378)
    shutil.copyfile(SHARED_RUN.parent / "ref_stars.fits", inputs / "ref_stars.fits")
    config = _config(tmp_path, TEMPLATES)
    report = ingest_campaign(config)  # no paths: the files matching the raw template
    assert (report.n_added, report.rejected) == (10, ())
    graph = JobGraph(CampaignIndex.from_config(load_campaign_config(config)))
    n_jobs = graph.jobs("process_visit").n_jobs
    assert n_jobs == 10
    runs = set()
    for job in range(n_jobs):
        lists = {
            k: v if isinstance(v, list) else [v]
            for k, v in graph.input_paths("process_visit", job).items()
        }
        raw = Path(lists["raws"][0])
        run = raw.name.split("-")[1]
        runs.add(run)
        for name in ("masks", "psfields", "tsfields"):
            (companion,) = map(Path, lists[name])
            assert companion.exists() and f"-{run}-" in companion.name, (raw, companion)
            assert fits.getheader(companion)["RUN"] == int(run)
    assert runs == {"006377", "006378"}
