"""The Fe55 scripts' main() on real files: simulated files (as `dcflow simulate` writes them)
-> gain -> photon transfer -> summary, and bad inputs. Truth is compared here, never read by
the scripts."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from dcflow.configs import from_mapping
from dcflow.errors import InputDataError
from dcflow.instruments.fe55_sim import Fe55SimConfig
from dcflow.io import read_table, write_fits
from dcflow.simulate import fe55_hdus

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

# the campaign's fe55 section, as config.yaml would give it (a 4-amp sensor-test camera)
FE55 = {
    "n_amps": 4,
    "amp_nx": 200,
    "ny": 400,
    "prescan_cols": 50,
    "overscan_cols": 2,
    "sensors": [1],
    "exposures": 2,
    "seed": 3,
    "events_per_amp": 700,
}


def load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts():
    return fe55_hdus, load("fe55_gain"), load("fe55_summary")


def simulate_files(simulate, root, *, exposure, fe55=FE55, name="raw"):
    """Write one simulated exposure's files as `dcflow simulate` makes them (``simulate`` is
    `dcflow.simulate.fe55_hdus`); return the paths of the raw frame, truth, flat and bias."""
    paths = [root / f"{kind}_{exposure}.fits" for kind in (name, "truth", "flat", "bias")]
    files = simulate(from_mapping(Fe55SimConfig, fe55), ccd=1, exposure=exposure)
    for dataset, path in zip(
        ("fe55_raw", "fe55_truth", "fe55_flat", "fe55_bias"), paths, strict=True
    ):
        write_fits(files[dataset], path)
    return paths


@pytest.fixture(scope="module")
def raws(tmp_path_factory, scripts):
    simulate, _, _ = scripts
    root = tmp_path_factory.mktemp("fe55")
    return [simulate_files(simulate, root, exposure=exposure) for exposure in range(2)]


def test_gain_script_writes_a_table_within_half_a_percent_and_a_picture(raws, scripts, tmp_path):
    _, gain, summary = scripts
    tables = []
    for exposure, (raw, *_) in enumerate(raws):
        table_path, plot_path = tmp_path / f"gain_{exposure}.fits", tmp_path / f"g{exposure}.png"
        gain.main(
            raw_path=str(raw),
            table_path=str(table_path),
            events_path=str(tmp_path / f"events_{exposure}.fits"),
            plot_path=str(plot_path),
            fe55=FE55,
            analysis={},
        )
        assert plot_path.read_bytes()[:4] == b"\x89PNG"
        assert plot_path.stat().st_size > 20_000  # four panels of histogram and text
        tables.append(table_path)
        table = read_table(table_path)
        truth = read_table(raws[exposure][1])
        assert list(table["amp"]) == ["A", "B", "C", "D"]
        assert np.all(np.abs(table["gain_e_per_adu"] / truth["gain_e_per_adu"] - 1) < 0.005)
        assert fits.getheader(table_path, 1)["EXPOSURE"] == exposure
    ptc_path, ptc_plot = tmp_path / "ptc.fits", tmp_path / "ptc.png"
    load("photon_transfer").main(
        flat_paths=[str(r[2]) for r in raws],
        bias_paths=[str(r[3]) for r in raws],
        table_path=str(ptc_path),
        plot_path=str(ptc_plot),
        fe55=FE55,
        photon_transfer={},
    )
    assert ptc_plot.read_bytes()[:4] == b"\x89PNG"
    ptc = read_table(ptc_path)
    truth = read_table(raws[0][1])
    # two flat pairs (20000 and 40000 e-) of 80000 pixels: the gain to ~0.3 %
    assert np.all(ptc["n_pairs"] == 2)
    assert np.all(np.abs(ptc["gain_e_per_adu"] / truth["gain_e_per_adu"] - 1) < 0.01)
    out, summary_plot = tmp_path / "summary.fits", tmp_path / "summary.png"
    summary.main(
        gain_paths=[str(p) for p in tables],
        event_paths=[str(tmp_path / f"events_{exposure}.fits") for exposure in range(2)],
        summary_path=str(out),
        plot_path=str(summary_plot),
        ptc_path=str(ptc_path),
        fe55_gain={},
    )
    assert summary_plot.read_bytes()[:4] == b"\x89PNG"
    result = read_table(out)
    assert "gain_truth_e_per_adu" not in result.colnames  # the summary reads no truth
    assert np.all(result["n_exposures"] == 2)
    # the pooled fit over both exposures' events is the sensor's gain; it counts about as
    # many events as the two exposures' fits
    events = read_table(tmp_path / "events_0.fits")
    assert set(events["amp"]) == {"A", "B", "C", "D"}
    per_exposure = sum(read_table(p)["n_events"] for p in tables)
    assert np.all(np.abs(result["n_events"] / per_exposure - 1) < 0.1)
    deviation = (result["gain_e_per_adu"] - truth["gain_e_per_adu"]) / result["gain_err_e_per_adu"]
    assert np.all(np.abs(deviation) < 4)
    assert np.all(np.abs(result["fe55_over_ptc"] - 1) < 0.015)
    assert np.all(result["trusted"]) and fits.getheader(out, 1)["NUNTRUST"] == 0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left no temporary file


def test_truncated_file_is_named_in_the_error(raws, scripts, tmp_path):
    _, gain, _ = scripts
    data = raws[0][0].read_bytes()
    broken = tmp_path / "fe55_truncated.fits"
    broken.write_bytes(data[: len(data) // 2])
    table = tmp_path / "gain.fits"
    with pytest.raises(InputDataError, match=r"fe55_truncated\.fits: unreadable or truncated"):
        gain.main(
            raw_path=str(broken),
            table_path=str(table),
            events_path=str(tmp_path / "e.fits"),
            plot_path=str(tmp_path / "p.png"),
            fe55=FE55,
            analysis={},
        )
    assert not table.exists()


def test_wrong_geometry_is_named_in_the_error(scripts, tmp_path):
    simulate, gain, _ = scripts
    other = {**FE55, "overscan_cols": 8}
    raw = simulate_files(simulate, tmp_path, exposure=0, fe55=other, name="fe55_wide_overscan")[0]
    with pytest.raises(InputDataError) as info:
        gain.main(
            raw_path=str(raw),
            table_path=str(tmp_path / "g.fits"),
            events_path=str(tmp_path / "e.fits"),
            plot_path=str(tmp_path / "p.png"),
            fe55=FE55,
            analysis={},
        )
    message = str(info.value)
    assert message.startswith(f"{raw}: amplifier geometry differs from the fe55 config: ")
    assert "raw shape (ny, nx)=(400, 1032) but the config gives (400, 1008)" in message
    assert "BIASSECA=[251:258,1:400] but the config gives [251:252,1:400]" in message
    two_amps = {**FE55, "n_amps": 2}
    with pytest.raises(
        InputDataError, match=r"4 amplifier\(s\) A,B,C,D but the config gives 2: A,B"
    ):
        gain.main(
            raw_path=str(raw),
            table_path=str(tmp_path / "g.fits"),
            events_path=str(tmp_path / "e.fits"),
            plot_path=str(tmp_path / "p.png"),
            fe55=two_amps,
            analysis={},
        )


def test_missing_or_broken_section_keywords_are_named(raws, scripts, tmp_path):
    _, gain, _ = scripts
    with fits.open(raws[0][0]) as hdus:
        header, data = hdus[0].header.copy(), hdus[0].data.copy()
    no_names = header.copy()
    del no_names["AMPNAMES"]
    path = tmp_path / "fe55_nonames.fits"
    fits.PrimaryHDU(data, no_names).writeto(path)
    kwargs = {
        "table_path": str(tmp_path / "g.fits"),
        "events_path": str(tmp_path / "e.fits"),
        "plot_path": str(tmp_path / "p.png"),
        "fe55": FE55,
        "analysis": {},
    }
    with pytest.raises(InputDataError, match=r"fe55_nonames\.fits: missing header keyword.*AMP"):
        gain.main(raw_path=str(path), **kwargs)
    no_bias = header.copy()
    del no_bias["BIASSECC"]
    path = tmp_path / "fe55_nobiassec.fits"
    fits.PrimaryHDU(data, no_bias).writeto(path)
    with pytest.raises(InputDataError, match=r"fe55_nobiassec\.fits: missing header keyword BI"):
        gain.main(raw_path=str(path), **kwargs)
    outside = header.copy()
    outside["DATASECD"] = "[900:1200,1:400]"
    path = tmp_path / "fe55_outside.fits"
    fits.PrimaryHDU(data, outside).writeto(path)
    with pytest.raises(InputDataError, match=r"fe55_outside\.fits: bad amplifier sections"):
        gain.main(raw_path=str(path), **kwargs)


def test_bad_analysis_config_is_rejected_by_name(raws, scripts, tmp_path):
    _, gain, _ = scripts
    with pytest.raises(ValueError, match=r"Fe55Config: unknown key\(s\) box"):
        gain.main(
            raw_path=str(raws[0][0]),
            table_path=str(tmp_path / "g.fits"),
            events_path=str(tmp_path / "e.fits"),
            plot_path=str(tmp_path / "p.png"),
            fe55=FE55,
            analysis={"box": 3},
        )


def test_summary_of_mismatched_tables_names_the_files(raws, scripts, tmp_path):
    _, gain, summary = scripts
    paths = []
    for exposure, fe55 in enumerate((FE55, {**FE55, "n_amps": 2})):
        sim_cfg = dataclasses.replace(Fe55SimConfig(), **{**fe55, "sensors": (1,)})
        raw = simulate_files(
            fe55_hdus, tmp_path, exposure=exposure, fe55=dataclasses.asdict(sim_cfg)
        )[0]
        table = tmp_path / f"gain{exposure}.fits"
        gain.main(
            raw_path=str(raw),
            table_path=str(table),
            events_path=str(tmp_path / f"events{exposure}.fits"),
            plot_path=str(tmp_path / "p.png"),
            fe55=fe55,
            analysis={},
        )
        paths.append(str(table))
    events = [str(tmp_path / f"events{exposure}.fits") for exposure in range(2)]
    with pytest.raises(InputDataError, match=r"gain0\.fits, .*gain1\.fits, .*gain_tables\[1\] has"):
        summary.main(gain_paths=paths, event_paths=events, summary_path=str(tmp_path / "s.fits"))
    with pytest.raises(InputDataError, match=r"events0\.fits: events of .*gain1\.fits is the gain"):
        summary.main(
            gain_paths=paths[::-1], event_paths=events, summary_path=str(tmp_path / "s.fits")
        )


def test_failed_fits_are_untrusted_amplifiers_and_stage_errors_name_the_file(
    raws, scripts, tmp_path
):
    _, gain, _ = scripts
    # no amplifier can be fitted: the table and its picture are written, every amplifier
    # untrusted with the reason (the ledger reports them), and the job does not crash
    gain.main(
        raw_path=str(raws[0][0]),
        table_path=str(tmp_path / "g.fits"),
        events_path=str(tmp_path / "e.fits"),
        plot_path=str(tmp_path / "p.png"),
        fe55=FE55,
        analysis={"min_events": 5000},
    )
    table = read_table(tmp_path / "g.fits")
    assert fits.getheader(tmp_path / "g.fits", 1)["NUNTRUST"] == len(table) == 4
    assert not np.any(table["trusted"]) and (tmp_path / "p.png").stat().st_size > 0
    assert all(str(v).startswith("no fit: only") for v in table["verdict"])
    # a frame the stage cannot read at all still fails, naming the file
    with fits.open(raws[0][0]) as hdul:
        data = hdul[0].data.astype(float)
        data[:] = 1000.0
        fits.PrimaryHDU(data, header=hdul[0].header).writeto(tmp_path / "flat_0.fits")
    with pytest.raises(InputDataError, match=r"flat_0\.fits: amplifier A: .* columns are all"):
        gain.main(
            raw_path=str(tmp_path / "flat_0.fits"),
            table_path=str(tmp_path / "h.fits"),
            events_path=str(tmp_path / "e.fits"),
            plot_path=str(tmp_path / "q.png"),
            fe55=FE55,
            analysis={},
        )
