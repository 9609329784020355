"""`dcflow ingest` of real files: fast headers, data ids from descriptions, companions, counts."""

from __future__ import annotations

import gzip
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.io import fits
from sdss_runs import SHARED_RUN, relabel_run, shared_run_copy

from dcflow.campaign.headers import HeaderReadError, parse_value, read_keywords
from dcflow.campaign.registry import Registry
from dcflow.errors import InputMissingError
from dcflow.orchestration.prepare import ingest_files

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DCFLOW = Path(sys.executable).parent / "dcflow"

pytestmark = pytest.mark.skipif(not SHARED_RUN.exists(), reason=f"{SHARED_RUN} absent")


def test_header_values_parse_as_fits_defines_them():
    assert parse_value("'it''s   '           / comment") == "it's"
    assert parse_value("                   T / flag") is True
    assert parse_value("                -12 / n") == -12
    assert parse_value("  1.5D+03 / exponent with D") == 1500.0
    assert parse_value("          ") is None
    with pytest.raises(ValueError, match="not a FITS value"):
        parse_value(" abc / x")


def test_fast_reader_equals_astropy_on_every_shared_file():
    files = sorted(SHARED.rglob("*.fit*"))
    assert len(files) >= 18
    for path in files:
        header = fits.getheader(path)
        ours = read_keywords(path)
        expected = {
            c.keyword: c.value for c in header.cards if c.keyword not in ("COMMENT", "HISTORY", "")
        }
        for key, value in expected.items():
            if key in ours:
                got = ours[key]
                assert got == (value.rstrip() if isinstance(value, str) else value), (path, key)
        assert set(expected) - set(ours) == set(), path
    assert read_keywords(files[0], {"NAXIS1", "NOPE"}).keys() <= {"NAXIS1"}


def test_unreadable_files_are_named(tmp_path):
    truncated = tmp_path / "trunc.fits"
    truncated.write_bytes(
        (SHARED_RUN / "40" / "objcs" / "4" / "psField-006377-4-0399.fit").read_bytes()[:3000]
    )
    with pytest.raises(HeaderReadError, match=r"trunc\.fits: file ends before the header's END"):
        read_keywords(truncated)
    text = tmp_path / "text.fits"
    text.write_text("hello" * 1000)
    with pytest.raises(HeaderReadError, match=r"text\.fits: not a FITS file"):
        read_keywords(text)
    broken_gz = tmp_path / "broken.fits.gz"
    broken_gz.write_bytes(gzip.compress(b"SIMPLE  =" + b" " * 100)[:40])
    with pytest.raises(HeaderReadError, match=r"broken\.fits\.gz"):
        read_keywords(broken_gz)


def _config(tmp_path: Path, instrument: str = "sdss") -> Path:
    config = tmp_path / "campaign.yaml"
    config.write_text(
        f"campaign: {{name: t, instrument: {instrument}}}\n"
        f"layout: {{input_root: {tmp_path}/in, output_root: {tmp_path}/out}}\n"
    )
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    relabel_run(root, 6378)
    relabel_run(root / "bad", 6379, keep_run_in=("fpM-006379-r",))
    return root


def test_two_runs_and_a_mismatched_companion(runs, tmp_path):
    config = _config(tmp_path)
    calls = []
    summary = ingest_files(
        config,
        [SHARED_RUN, runs / "6378", runs / "bad" / "6379"],
        workers=2,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert (summary.n_raws, summary.n_added, summary.n_known) == (15, 14, 0)
    assert calls[-1] == (15, 15)
    assert summary.n_companions == 14 * 3
    ((path, reason),) = summary.rejected
    fpm = runs / "bad" / "6379" / "40" / "objcs" / "4" / "fpM-006379-r4-0399.fit"
    assert path.endswith("fpC-006379-r4-0399.fit.gz")
    assert path in reason and str(fpm) in reason and "RUN=6377 (raw run=6379)" in reason
    registry = Registry(tmp_path / "out" / "registry.sqlite3")
    records = registry.records()
    assert len(records) == 14 and len({r.visit for r in records}) == 14
    by_run = {}
    for record in records:
        data_id = registry.data_id(record.path)
        by_run.setdefault(data_id["run"], []).append(data_id["filter"])
        assert (data_id["field"], data_id["camcol"], data_id["rerun"]) == (399, 4, 40)
        companions = registry.companions(record.path)
        assert sorted(companions) == ["fpM", "psField", "tsField"]
        assert f"{data_id['run']:06d}" in Path(companions["fpM"]).name
        assert str(data_id["run"]) in str(Path(companions["fpM"]).parents[3])
    assert {k: sorted(v) for k, v in by_run.items()} == {
        6377: list("giruz"),
        6378: list("giruz"),
        6379: list("giuz"),
    }
    mjd = {registry.data_id(r.path)["run"]: r.mjd for r in records if r.filter == "g"}
    assert mjd[6378] - mjd[6377] == pytest.approx(1.0, abs=1e-6)
    assert registry.rejected() == [(path, reason)]
    registry.close()


def test_second_ingest_adds_only_new_files_and_counts_truly(runs, tmp_path):
    config = _config(tmp_path)
    first = ingest_files(config, [SHARED_RUN], workers=1)
    assert (first.n_added, first.n_known, first.rejected) == (5, 0, ())
    db = tmp_path / "out" / "registry.sqlite3"
    before = sqlite3.connect(db).execute("SELECT rowid, * FROM raw ORDER BY rowid").fetchall()
    again = ingest_files(config, [SHARED_RUN], workers=1)
    assert (again.n_raws, again.n_added, again.n_known, again.rejected) == (5, 0, 5, ())
    third = ingest_files(config, [SHARED_RUN, runs / "6378"], workers=2)
    assert (third.n_raws, third.n_added, third.n_known) == (10, 5, 5)
    after = sqlite3.connect(db).execute("SELECT rowid, * FROM raw ORDER BY rowid").fetchall()
    assert after[:5] == before and len(after) == 10
    listing = tmp_path / "list.txt"
    listing.write_text("# one file\n" + str(next((runs / "6378").rglob("fpC-*-g4-*"))) + "\n")
    listed = ingest_files(config, [], file_lists=[listing])
    assert (listed.n_files, listed.n_raws, listed.n_added, listed.n_known) == (1, 1, 0, 1)


def test_duplicate_data_ids_and_missing_companions_are_rejected(tmp_path):
    config = _config(tmp_path)
    copy = shared_run_copy(tmp_path / "copy")
    (copy / "40" / "calibChunks" / "4" / "tsField-006377-4-40-0399.fit").unlink()
    summary = ingest_files(config, [SHARED_RUN, copy], workers=1)
    assert summary.n_added == 5
    reasons = dict(summary.rejected)
    assert len(reasons) == 5
    for path, reason in reasons.items():
        assert path.startswith(str(copy))
        assert "no tsField companion tsField-006377-4-40-0399.fit" in reason
    # with its companion back, the copy collides with the registered run 6377
    (copy / "40" / "calibChunks" / "4" / "tsField-006377-4-40-0399.fit").write_bytes(
        (SHARED_RUN / "40" / "calibChunks" / "4" / "tsField-006377-4-40-0399.fit").read_bytes()
    )
    summary = ingest_files(config, [copy], workers=1)
    assert summary.n_added == 0 and len(summary.rejected) == 5
    registered = {str(SHARED_RUN.resolve()), os.path.abspath(SHARED_RUN)}  # shared/ may be a link
    assert all(
        any("is already registered by " + path in r for path in registered)
        for _, r in summary.rejected
    )


def test_ingest_matching_no_file_fails(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(InputMissingError, match=r"no raw file of camera sdss .* among the 5 FITS"):
        ingest_files(config, [SHARED / "fe55-esis1"])
    with pytest.raises(InputMissingError, match=r"no such file or directory: .*nowhere"):
        ingest_files(config, [tmp_path / "nowhere"])
    result = subprocess.run(
        [str(DCFLOW), "ingest", "--config", str(config), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "dcflow ingest: no raw file of camera sdss" in result.stderr


def test_cli_ingests_the_lab_camera_and_reports_counts(tmp_path):
    config = _config(tmp_path)
    argv = [str(DCFLOW), "ingest", "--config", str(config), "--camera", "esis1"]
    first = subprocess.run(
        [*argv, str(SHARED / "fe55-esis1")], capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr
    assert (
        "5 raw file(s) of 5 FITS file(s): 5 new, 0 already registered, 0 rejected" in first.stdout
    )
    assert "ingest: headers [" in first.stderr and "5/5" in first.stderr
    second = subprocess.run(
        [*argv, str(SHARED / "fe55-esis1")], capture_output=True, text=True, check=False
    )
    assert "5 raw file(s) of 5 FITS file(s): 0 new, 5 already registered" in second.stdout
    registry = Registry(tmp_path / "out" / "registry.sqlite3")
    records = registry.records()
    assert sorted(r.visit for r in records) == [2, 4803, 4804, 4860, 4861]
    assert {r.exptime for r in records} == {1.999}
    assert registry.data_id(records[0].path)["exposure"] == records[0].visit
    registry.close()
