"""The sdss instrument and processCcd on the real SDSS Stripe 82 frames (issue 7).

The frames, masks and calibration files come from the campaign config
config/sdss-stripe82.yaml (``layout.input_root``, relative to the repository: ../shared/data);
tests that need them skip, saying so, only when that folder is absent. Hand-made inputs check
the file parsing and unit conversions with answers worked out by hand.

Truth on the real frames:
- SDSS's own photometric calibration of the frame (tsField ``aa``, ``kk``, ``airmass``; the fpC
  ``FLUX20`` is reported beside it);
- the Stripe 82 co-added star catalog (positions and magnitudes);
- sep (Source Extractor as a library) run here on the same pixels, for detection and aperture
  photometry.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from scipy import ndimage

from dcflow.config_schema import load_config
from dcflow.configs import from_mapping
from dcflow.errors import InputDataError
from dcflow.exposure import Exposure, MaskPlane
from dcflow.instruments import sdss
from dcflow.io import read_fits, read_table, write_fits
from dcflow.layout import Layout

REPO = Path(__file__).resolve().parents[1]
CONFIG_PATH = REPO / "config" / "sdss-stripe82.yaml"
CAMCOL = 4
BANDS = sdss.SDSS_BANDS

ZP_TOLERANCE_MAG = {"u": 0.05, "g": 0.025, "r": 0.025, "i": 0.025, "z": 0.025}
ASTROMETRIC_RMS_MAX_MAS = {"u": 100.0, "g": 60.0, "r": 60.0, "i": 60.0, "z": 100.0}
ASTROMETRY_REF_R_MAX = 20.0
MATCH_RADIUS_ARCSEC = 1.0
SEP_SNR_MIN = 10.0
ISOLATION_RADIUS_FWHM = 5.0
EDGE_MARGIN_PIX = 10
DETECTION_FRACTION_MIN = 0.95
APERTURE_SNR_MIN = 50.0
APERTURE_MEDIAN_TOLERANCE = 0.01


CONFIG = load_config(CONFIG_PATH)
DATA_ROOT = (REPO / CONFIG["layout"]["input_root"]).resolve()
needs_data = pytest.mark.skipif(
    not DATA_ROOT.is_dir(),
    reason=f"SDSS Stripe 82 data folder {DATA_ROOT} (layout.input_root of {CONFIG_PATH.name}) "
    "is absent",
)


def _input_layout() -> Layout:
    # The campaign's layout, its relative input root taken from the repository (as Snakemake,
    # which runs there, does) rather than from the test's working directory.
    return dataclasses.replace(Layout.from_config(CONFIG), input_root=str(DATA_ROOT))


def test_campaign_config_is_valid_and_names_every_sdss_input():
    """config/sdss-stripe82.yaml passes the campaign schema (load_config above), its processCcd
    section builds the stage config, and its templates place every file of the five frames."""
    assert CONFIG["campaign"] == {"name": "sdss-stripe82", "instrument": "sdss", "payload": "full"}
    config = _process_ccd_config()
    assert config.detection_fwhm_arcsec == CONFIG["process_ccd"]["detection_fwhm_arcsec"]
    layout = Layout.from_config(CONFIG)
    names = {
        layout.path(dataset_type, instrument="sdss", ccd=CAMCOL, filter=band).split("/")[-1]
        for dataset_type in ("raw", "sdss_mask", "sdss_psfield", "sdss_tsfield", "refcat")
        for band in BANDS
    }
    assert names == {
        *(f"fpC-006377-{band}4-0399.fit.gz" for band in BANDS),
        *(f"fpM-006377-{band}4-0399.fit" for band in BANDS),
        "psField-006377-4-0399.fit",
        "tsField-006377-4-40-0399.fit",
        "ref_stars.fits",
    }
    assert layout.path("raw", ccd=CAMCOL, filter="r").startswith("../shared/data/sdss-stripe82/")


# ---------------------------------------------------------------------------------------------
# Real frames, read once per test session


@functools.cache
def _prepared(band: str) -> tuple[fits.HDUList, fits.HDUList, sdss.SdssFrame]:
    layout = _input_layout()
    fpc = read_fits(layout.path("raw", ccd=CAMCOL, filter=band))
    fpm = read_fits(layout.path("sdss_mask", ccd=CAMCOL, filter=band))
    frame = sdss.prepare_frame(
        fpc,
        fpm,
        read_fits(layout.path("sdss_psfield", ccd=CAMCOL, filter=band)),
        read_fits(layout.path("sdss_tsfield", ccd=CAMCOL, filter=band)),
        read_table(layout.path("refcat", instrument="sdss")),
    )
    return fpc, fpm, frame


def _frame(band: str):
    fpc, fpm, frame = _prepared(band)
    return fpc, fpm, frame.calibration, frame.exposure


@functools.cache
def _refcat() -> Table:
    return sdss.reference_catalog(read_table(_input_layout().path("refcat", instrument="sdss")))


def _match(ra1, dec1, ra2, dec2, radius_arcsec):
    """Nearest neighbour of each (ra1, dec1) among (ra2, dec2): index, offsets in mas."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    c1 = SkyCoord(np.asarray(ra1) * u.deg, np.asarray(dec1) * u.deg)
    c2 = SkyCoord(np.asarray(ra2) * u.deg, np.asarray(dec2) * u.deg)
    idx, sep2d, _ = c1.match_to_catalog_sky(c2)
    ok = sep2d.arcsec < radius_arcsec
    dra, ddec = c1[ok].spherical_offsets_to(c2[idx[ok]])
    return ok, idx, dra.to(u.mas).value, ddec.to(u.mas).value


@functools.cache
def _sep_catalog(band: str) -> Table:
    """sep's sources on the exposure: background, detection, windowed centroids, S/N."""
    _, _, calibration, exposure = _frame(band)
    image = exposure.image.astype(np.float64)
    err = np.sqrt(exposure.variance.astype(np.float64))
    background = sep.Background(image, mask=exposure.mask != 0, bw=128, bh=128)
    sub = image - background.back()
    objects = sep.extract(sub, 1.5, err=err, minarea=5)
    fwhm_pix = calibration.psf_fwhm_arcsec / sdss.PIXEL_SCALE_ARCSEC
    x, y, _ = sep.winpos(sub, objects["x"], objects["y"], fwhm_pix / 2.3548)
    # winpos can wander off the frame or to NaN for a few spurious faint detections: drop them.
    ny, nx = image.shape
    finite = (x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1)
    x, y, flags = x[finite], y[finite], objects["flag"][finite]
    flux, flux_err, _ = sep.sum_circle(sub, x, y, fwhm_pix, err=err)
    out = Table({"x": x, "y": y, "flag": flags, "snr": flux / flux_err})
    out.meta["fwhm_pix"] = fwhm_pix
    out.meta["sub"] = sub
    out.meta["err"] = err
    return out


@pytest.fixture(scope="module", autouse=True)
def _release_cached_frames():
    """The real frames and their products (~0.6 GB in all) are freed when this module ends."""
    yield
    for cached in (_prepared, _refcat, _sep_catalog, _processed):
        cached.cache_clear()


def _process_ccd_config():
    from dcflow.stages.process_ccd import ProcessCcdConfig

    return from_mapping(ProcessCcdConfig, CONFIG.get("process_ccd"))


@functools.cache
def _processed(band: str):
    from dcflow.stages.process_ccd import process_ccd

    _, _, frame = _prepared(band)
    return process_ccd(frame.exposure, frame.refcat, band=band, config=_process_ccd_config())


def _src_pixels(result, exposure: Exposure) -> tuple[np.ndarray, np.ndarray]:
    src = result.src
    if "x" in src.colnames and "y" in src.colnames:
        return np.asarray(src["x"], float), np.asarray(src["y"], float)
    return result.calexp.wcs.world_to_pixel_values(src["ra_deg"], src["dec_deg"])


# ---------------------------------------------------------------------------------------------
# Hand-made inputs: parsing and conversions


def _fpm_plane_hdu(objects: list[tuple[int, int, list[tuple[int, int, int]]]]) -> fits.BinTableHDU:
    """An fpM plane table: per object (row0, col0, spans (y, x0, x1)), as SDSS writes it."""
    spans = [np.asarray(s, dtype=">i2").reshape(-1, 3) for _, _, s in objects]
    columns = [
        fits.Column(name="refcntr", format="1J", array=np.ones(len(objects), np.int32)),
        fits.Column(name="nspan", format="1J", array=np.array([len(s) for s in spans], np.int32)),
        fits.Column(name="row0", format="1J", array=np.array([o[0] for o in objects], np.int32)),
        fits.Column(name="col0", format="1J", array=np.array([o[1] for o in objects], np.int32)),
        fits.Column(
            name="npix",
            format="1J",
            array=np.array([int((s[:, 2] - s[:, 1] + 1).sum()) for s in spans], np.int32),
        ),
        fits.Column(
            name="s",
            format="PB()",
            array=np.array([np.frombuffer(s.tobytes(), np.uint8) for s in spans], dtype=object),
        ),
    ]
    return fits.BinTableHDU.from_columns(columns)


def _fpm(shape: tuple[int, int], planes: dict[str, list]) -> fits.HDUList:
    names = [
        "S_MASK_INTERP",
        "S_MASK_SATUR",
        "S_MASK_NOTCHECKED",
        "S_MASK_OBJECT",
        "S_MASK_BRIGHTOBJECT",
        "S_MASK_BINOBJECT",
        "S_MASK_CATOBJECT",
        "S_MASK_SUBTRACTED",
        "S_MASK_GHOST",
        "S_MASK_CR",
    ]
    primary = fits.PrimaryHDU()
    primary.header["MASKROWS"] = shape[0]
    primary.header["MASKCOLS"] = shape[1]
    primary.header["NPLANE"] = len(names)
    hdus = [primary] + [_fpm_plane_hdu(planes.get(name, [])) for name in names]
    types = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="defName", format="31A", array=["S_MASKTYPE"] * (len(names) + 1)),
            fits.Column(name="attributeName", format="31A", array=[*names, "S_NMASK_TYPES"]),
            fits.Column(name="Value", format="1J", array=np.arange(len(names) + 1)),
        ]
    )
    types.header["TYPENAME"] = "S_MASKTYPE"
    return fits.HDUList([*hdus, types])


def test_fpm_mask_paints_spans_with_offsets_and_clips_the_frame_edge():
    shape = (7, 12)  # (ny, nx): non-square, so a row/column swap fails
    fpm = _fpm(
        shape,
        {
            # one CR object at row0=2, col0=3: spans (0, 1, 2) and (1, 0, 0) -> (2, 4..5), (3, 3)
            "S_MASK_CR": [(2, 3, [(0, 1, 2), (1, 0, 0)])],
            # a saturated trail one pixel off the frame on the left: (5, -1..1) -> (5, 0..1)
            "S_MASK_SATUR": [(0, 0, [(5, -1, 1)])],
            # photo's own detections are not pixel defects: not carried over
            "S_MASK_OBJECT": [(0, 0, [(0, 0, 11)])],
            "S_MASK_GHOST": [(0, 0, [(6, 10, 11)])],
        },
    )
    mask = sdss.fpm_mask(fpm, shape=shape)
    expected = np.zeros(shape, np.int32)
    expected[2, 4:6] = MaskPlane.CR
    expected[3, 3] = MaskPlane.CR
    expected[5, 0:2] = MaskPlane.SAT
    expected[6, 10:12] = MaskPlane.SUSPECT
    np.testing.assert_array_equal(mask, expected)


def test_fpm_survives_read_fits(tmp_path):
    """read_fits keeps variable-length-array tables whole (astropy cannot copy them)."""
    shape = (7, 12)
    fpm = _fpm(shape, {"S_MASK_INTERP": [(1, 2, [(0, 0, 3), (1, 1, 2)])]})
    write_fits(fpm, tmp_path / "fpM.fit")
    mask = sdss.fpm_mask(read_fits(tmp_path / "fpM.fit"), shape=shape)
    assert np.argwhere(mask == MaskPlane.INTRP).tolist() == [
        [1, 2],
        [1, 3],
        [1, 4],
        [1, 5],
        [2, 3],
        [2, 4],
    ]


def test_fpm_mask_rejects_a_frame_of_another_size():
    fpm = _fpm((7, 12), {})
    with pytest.raises(InputDataError, match=r"fpM covers \(7, 12\).*frame is \(12, 7\)"):
        sdss.fpm_mask(fpm, shape=(12, 7))


def test_fpm_without_plane_names_is_an_input_error():
    fpm = _fpm((7, 12), {})
    del fpm[-1]
    with pytest.raises(InputDataError, match="no S_MASKTYPE table"):
        sdss.fpm_plane_spans(fpm)


def test_fpm_span_list_not_matching_nspan_is_an_input_error():
    fpm = _fpm((7, 12), {"S_MASK_CR": [(0, 0, [(0, 1, 2)])]})
    fpm[10].data["nspan"][0] = 2
    with pytest.raises(InputDataError, match=r"S_MASK_CR: span list of 6 bytes.*nspan=2"):
        sdss.fpm_plane_spans(fpm)


def _fpc(data_adu: np.ndarray, **keys) -> fits.HDUList:
    header = fits.Header()
    header.update({"SOFTBIAS": 1000, "FILTER": "r", "EXPTIME": "50.0", "FLUX20": 1000.0})
    header.update(keys)
    return fits.HDUList([fits.PrimaryHDU(data=data_adu.astype(np.uint16), header=header)])


def _calibration(band: str = "r") -> sdss.FrameCalibration:
    return sdss.FrameCalibration(
        band=band,
        gain_e_per_adu=4.0,
        dark_variance_adu2=1.5,
        sky_adu=100.0,
        psf_fwhm_arcsec=1.2,
        aa_mag=-24.0,
        aa_err_mag=0.01,
        kk_mag_per_airmass=0.1,
        airmass=1.2,
    )


def test_fpc_counts_remove_the_software_bias():
    data = np.array([[1000, 1001, 3000], [999, 65535, 1000]])
    counts = sdss.fpc_counts_adu(_fpc(data))
    np.testing.assert_array_equal(counts, [[0, 1, 2000], [-1, 64535, 0]])
    assert counts.dtype == np.float32


def test_fpc_without_softbias_is_an_input_error():
    hdus = _fpc(np.full((3, 4), 1000))
    del hdus[0].header["SOFTBIAS"]
    with pytest.raises(InputDataError, match="fpC header lacks keyword SOFTBIAS"):
        sdss.fpc_counts_adu(hdus)


def test_zero_points_by_hand():
    header = _fpc(np.full((3, 4), 1000))[0].header
    zp = sdss.sdss_zero_point(header, _calibration())
    # FLUX20 = 1000 ADU at 4 e-/ADU: 4000 e- for a 20th-mag star.
    assert zp.flux20_zp_mag == pytest.approx(20 + 2.5 * math.log10(4000.0), abs=1e-12)
    # 24 - 0.1 * 1.2 for 1 ADU/s; 50 s at 4 e-/ADU is 200 e- per ADU/s.
    assert zp.tsfield_zp_mag == pytest.approx(23.88 + 2.5 * math.log10(200.0), abs=1e-12)


def test_zero_point_rejects_nonpositive_flux20_and_a_filter_mismatch():
    header = _fpc(np.full((3, 4), 1000), FLUX20=-9999.0)[0].header
    with pytest.raises(InputDataError, match="FLUX20 must be > 0 ADU; got -9999"):
        sdss.sdss_zero_point(header, _calibration())
    header = _fpc(np.full((3, 4), 1000), FILTER="g")[0].header
    with pytest.raises(InputDataError, match="fpC is filter g but the calibration is for r"):
        sdss.sdss_zero_point(header, _calibration("r"))


def test_make_exposure_by_hand():
    shape = (5, 8)
    data = np.full(shape, 1100)
    data[2, 3] = 1000 + 2500
    hdus = _fpc(
        data,
        CTYPE1="RA---TAN",
        CTYPE2="DEC--TAN",
        CRPIX1=4.0,
        CRPIX2=3.0,
        CRVAL1=351.6,
        CRVAL2=0.1,
        CD1_1=0.0,
        CD1_2=1.1e-4,
        CD2_1=1.1e-4,
        CD2_2=0.0,
    )
    fpm = _fpm(shape, {"S_MASK_CR": [(0, 0, [(2, 3, 3)])]})
    exposure = sdss.make_exposure(hdus, fpm, _calibration())
    assert exposure.image[0, 0] == pytest.approx(400.0)  # 100 ADU * 4 e-/ADU
    assert exposure.image[2, 3] == pytest.approx(10000.0)
    assert exposure.variance[0, 0] == pytest.approx(400.0 + 1.5 * 16)
    assert exposure.mask[2, 3] == MaskPlane.CR and exposure.mask.sum() == MaskPlane.CR
    assert exposure.header["EXPTIME"] == 50.0 and exposure.header["GAIN"] == 1.0
    # FITS pixel (4, 3) is array [2, 3]
    assert exposure.wcs.pixel_to_world_values(3, 2) == pytest.approx((351.6, 0.1))


def test_make_exposure_rejects_a_calibration_of_another_filter():
    hdus = _fpc(np.full((5, 8), 1100))
    with pytest.raises(InputDataError, match="fpC is filter r but the calibration is for g"):
        sdss.make_exposure(hdus, _fpm((5, 8), {}), _calibration("g"))


def test_band_and_data_id_validation():
    with pytest.raises(ValueError, match="band must be one of u, g, r, i, z; got 'y'"):
        sdss.sdss_data_id(6377, 4, 399, "y")
    with pytest.raises(ValueError, match=r"camcol must be 1\.\.6; got 7"):
        sdss.sdss_data_id(6377, 7, 399, "r")
    with pytest.raises(ValueError, match=r"field must be in 0\.\.9999; got 10000"):
        sdss.sdss_data_id(6377, 4, 10000, "r")
    with pytest.raises(ValueError, match=r"ccd must be the camera column 1\.\.6; got 0"):
        sdss.sdss_frame_of_data_id(637703992, 0)
    with pytest.raises(ValueError, match="visit must end in a filter index 0-4; got 637703997"):
        sdss.sdss_frame_of_data_id(637703997, 4)


def test_data_id_round_trip():
    data_id = sdss.sdss_data_id(6377, 4, 399, "r")
    assert data_id == {"instrument": "sdss", "visit": 637703992, "ccd": 4, "filter": "r"}
    for band in BANDS:
        data_id = sdss.sdss_data_id(6377, 4, 399, band)
        assert sdss.sdss_frame_of_data_id(data_id["visit"], data_id["ccd"]) == (6377, 4, 399, band)


def test_reference_catalog_adapter():
    stars = Table(
        {
            "id": [1, 2, 3],
            "ra": [-9.5, -6.25, 10.0],
            "dec": [0.1, -0.2, 0.3],
            "starnotgal": [1, 1, 0],
            **{b: [18.0, 19.0, 20.0] for b in BANDS},
            **{f"{b}_err": [0.01, 0.02, 0.03] for b in BANDS},
        }
    )
    refcat = sdss.reference_catalog(stars, bands=("g", "r"))
    assert refcat.colnames == [
        "id",
        "ra_deg",
        "dec_deg",
        "g_mag",
        "g_mag_err",
        "r_mag",
        "r_mag_err",
    ]
    np.testing.assert_allclose(refcat["ra_deg"], [350.5, 353.75])
    np.testing.assert_allclose(refcat["r_mag_err"], [0.01, 0.02])
    with pytest.raises(InputDataError, match=r"lacks column.*z_err"):
        sdss.reference_catalog(stars[["id", "ra", "dec", "z"]], bands=("z",))
    with pytest.raises(ValueError, match="band must be one of"):
        sdss.reference_catalog(stars, bands=("Y",))


def test_frame_calibration_rejects_unknown_band_and_missing_tables():
    with pytest.raises(ValueError, match="band must be one of u, g, r, i, z; got 'y'"):
        sdss.frame_calibration(fits.HDUList(), fits.HDUList(), band="y")
    with pytest.raises(InputDataError, match=r"psField lacks its per-filter table \(HDU 6\)"):
        sdss.frame_calibration(fits.HDUList([fits.PrimaryHDU()]), fits.HDUList(), band="r")


def test_registry_record_needs_the_fpc_keywords():
    header = _fpc(np.full((3, 4), 1000), RUN=6377, CAMCOL=4, FRAME=399, CAMROW=1, TAI=4.6e9)[
        0
    ].header
    with pytest.raises(KeyError, match="missing header keyword CRVAL1"):
        sdss.record_from_fpc_header(header, "fpC.fit")
    header.update({"CRVAL1": 351.6, "CRVAL2": 0.1, "CAMCOL": 9})
    with pytest.raises(ValueError, match=r"no valid data id: camcol must be 1\.\.6; got 9"):
        sdss.record_from_fpc_header(header, "fpC.fit")


# ---------------------------------------------------------------------------------------------
# The instrument layer on the real frames


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_real_frame_data_id_and_registry_record(band):
    fpc, _, frame = _prepared(band)
    expected = sdss.sdss_data_id(6377, CAMCOL, 399, band)
    assert frame.data_id == expected
    record = sdss.record_from_fpc_header(fpc[0].header, "fpC.fit.gz")
    assert (record.visit, record.ccd, record.filter) == (expected["visit"], CAMCOL, band)
    assert record.exptime == pytest.approx(53.907456)
    # the frame's first-row TAI agrees with tsField's MJD of the frame to a second
    mjd_tsfield = float(_input_tsfield()[1].data["mjd"][0][BANDS.index(band)])
    assert record.mjd == pytest.approx(mjd_tsfield, abs=1.0 / 86400)
    assert len(frame.refcat) > 100  # ~100 stars on the frame, plus the 50-pixel margin


def _input_tsfield() -> fits.HDUList:
    return read_fits(_input_layout().path("sdss_tsfield", ccd=CAMCOL, filter="r"))


@needs_data
def test_fpm_spans_match_sdss_bounding_boxes_and_pixel_counts():
    """Every object mask of every plane and filter spans exactly SDSS's bounding box
    (rmin, rmax, cmin, cmax) and has SDSS's pixel count npix. Exception, measured: photo's
    circular NOTCHECKED masks around saturated stars count one pixel too many per span."""
    for band in BANDS:
        _, fpm, _, _ = _frame(band)
        spans = sdss.fpm_plane_spans(fpm)
        assert "S_MASK_CR" in spans and "S_MASK_INTERP" in spans
        for name, value in zip(fpm[-1].data["attributeName"], fpm[-1].data["Value"], strict=True):
            if name == "S_NMASK_TYPES":
                continue
            table = fpm[int(value) + 1].data
            n_pixels = 0
            for row in table:
                t = np.asarray(row["s"], np.uint8).view(">i2").reshape(-1, 3).astype(int)
                t[:, 0] += row["row0"]
                t[:, 1:] += row["col0"]
                box = (t[:, 0].min(), t[:, 0].max(), t[:, 1].min(), t[:, 2].max())
                assert box == (row["rmin"], row["rmax"], row["cmin"], row["cmax"])
                n = int((t[:, 2] - t[:, 1] + 1).sum())
                circle_quirk = name == "S_MASK_NOTCHECKED" and row["npix"] == n + row["nspan"]
                assert n == row["npix"] or circle_quirk, (band, name, n, row["npix"])
                n_pixels += n
            plane = spans[name]
            assert n_pixels == int((plane[:, 2] - plane[:, 1] + 1).sum())


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_exposure_sky_and_noise_in_electrons(band):
    """The image's sky is photo's (psField) in electrons; the variance matches the pixel noise."""
    fpc, _, calibration, exposure = _frame(band)
    assert exposure.shape == (1489, 2048)
    clean = exposure.mask == 0
    sky_e = float(np.median(exposure.image[clean]))
    assert sky_e == pytest.approx(calibration.sky_adu * calibration.gain_e_per_adu, rel=0.01)
    assert sky_e == pytest.approx(fpc[0].header["SKY"] * calibration.gain_e_per_adu, rel=0.01)
    catalog = _sep_catalog(band)
    sub = catalog.meta["sub"]
    q25, q75 = np.percentile(sub[clean & (np.abs(sub) < 5 * np.sqrt(exposure.variance))], (25, 75))
    measured_sigma_e = (q75 - q25) / 1.349
    model_sigma_e = float(np.sqrt(np.median(exposure.variance[clean])))
    assert measured_sigma_e == pytest.approx(model_sigma_e, rel=0.10)


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_sdss_zero_point_convention_against_the_reference_stars(band):
    """SDSS's tsField zero point, as computed here (electrons in the exposure), is the one the
    reference stars give with sep photometry in SDSS's 7.43" calibration aperture."""
    fpc, _, calibration, exposure = _frame(band)
    zp = sdss.sdss_zero_point(fpc[0].header, calibration)
    catalog = _sep_catalog(band)
    ra, dec = exposure.wcs.pixel_to_world_values(catalog["x"], catalog["y"])
    refcat = sdss.refcat_in_frame(_refcat(), exposure.wcs, exposure.shape, margin_pix=0)
    refcat = refcat[refcat[f"{band}_mag_err"] < 0.05]
    ok, idx, _, _ = _match(refcat["ra_deg"], refcat["dec_deg"], ra, dec, MATCH_RADIUS_ARCSEC)
    radius_pix = 7.43 / sdss.PIXEL_SCALE_ARCSEC
    flux, flux_err, _ = sep.sum_circle(
        catalog.meta["sub"],
        catalog["x"][idx[ok]],
        catalog["y"][idx[ok]],
        radius_pix,
        err=catalog.meta["err"],
    )
    good = (flux > 0) & (flux / flux_err > APERTURE_SNR_MIN)
    assert good.sum() >= 5
    measured = float(np.median(refcat[f"{band}_mag"][ok][good] + 2.5 * np.log10(flux[good])))
    assert measured == pytest.approx(zp.tsfield_zp_mag, abs=2 * ZP_TOLERANCE_MAG[band])


# ---------------------------------------------------------------------------------------------
# processCcd on the real frames: the checks of issue 7


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_process_ccd_zero_point_matches_sdss_calibration(band):
    fpc, _, calibration, _ = _frame(band)
    expected = sdss.sdss_zero_point(fpc[0].header, calibration).tsfield_zp_mag
    zp_mag = float(_processed(band).calexp.header["ZP"])
    assert abs(zp_mag - expected) <= ZP_TOLERANCE_MAG[band], (
        f"{band}: processCcd ZP {zp_mag:.4f}, SDSS tsField {expected:.4f} "
        f"(diff {zp_mag - expected:+.4f} mag; SDSS's own aaErr {calibration.aa_err_mag:.4f})"
    )


def _astrometric_rms_mas(ra, dec, usable, refcat: Table) -> tuple[float, int]:
    """rms (mas) of the sky offsets of usable sources to reference stars with r < 20."""
    bright = refcat[refcat["r_mag"] < ASTROMETRY_REF_R_MAX]
    ra, dec = np.asarray(ra)[usable], np.asarray(dec)[usable]
    ok, _, dra, ddec = _match(bright["ra_deg"], bright["dec_deg"], ra, dec, MATCH_RADIUS_ARCSEC)
    return float(np.sqrt(np.mean(dra**2 + ddec**2))), int(ok.sum())


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_process_ccd_astrometry_beats_header_wcs(band):
    """Offsets of the reference stars (r < 20) to the sources measured well enough to test a
    WCS: unflagged (not saturated, blended, on bad pixels or at the edge) and at the S/N that
    processCcd's astrometry uses (``astrom_min_snr``). The same pixel positions through the
    header WCS give the starting rms."""
    fpc, _, _, exposure = _frame(band)
    result = _processed(band)
    src = result.src
    usable = (np.asarray(src["flags"]) == 0) & (
        np.asarray(src["snr"]) >= _process_ccd_config().astrom_min_snr
    )
    refcat = sdss.refcat_in_frame(_refcat(), exposure.wcs, exposure.shape, margin_pix=0)
    fit_rms, n_fit = _astrometric_rms_mas(src["ra_deg"], src["dec_deg"], usable, refcat)
    x, y = _src_pixels(result, exposure)
    header_ra, header_dec = sdss.header_wcs(fpc[0].header).pixel_to_world_values(x, y)
    header_rms, _ = _astrometric_rms_mas(header_ra, header_dec, usable, refcat)
    assert n_fit >= 20
    assert fit_rms <= ASTROMETRIC_RMS_MAX_MAS[band], f"{band}: fit rms {fit_rms:.1f} mas"
    assert fit_rms < header_rms, f"{band}: fit {fit_rms:.1f} mas, header {header_rms:.1f} mas"


def _isolated_sep_sources(band: str) -> Table:
    catalog = _sep_catalog(band)
    _, _, _, exposure = _frame(band)
    ny, nx = exposure.shape
    x, y = catalog["x"], catalog["y"]
    dist = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(dist, np.inf)
    isolated = dist.min(axis=1) > ISOLATION_RADIUS_FWHM * catalog.meta["fwhm_pix"]
    inside = (
        (x >= EDGE_MARGIN_PIX)
        & (x < nx - EDGE_MARGIN_PIX)
        & (y >= EDGE_MARGIN_PIX)
        & (y < ny - EDGE_MARGIN_PIX)
    )
    # sep flags 0: neither blended nor truncated nor saturated-aperture; and no saturated or
    # doubtful (SAT, SUSPECT) pixel at the centre.
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    clean = (exposure.mask[iy, ix] & (MaskPlane.SAT | MaskPlane.SUSPECT)) == 0
    keep = isolated & inside & clean & (catalog["flag"] == 0) & (catalog["snr"] >= SEP_SNR_MIN)
    return catalog[keep]


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_process_ccd_finds_the_isolated_sep_sources(band):
    _, _, _, exposure = _frame(band)
    result = _processed(band)
    reference = _isolated_sep_sources(band)
    x, y = _src_pixels(result, exposure)
    dist = np.hypot(reference["x"][:, None] - x[None, :], reference["y"][:, None] - y[None, :])
    found = dist.min(axis=1) <= 1.0
    assert len(reference) >= 25
    fraction = found.mean()
    assert fraction >= DETECTION_FRACTION_MIN, (
        f"{band}: {found.sum()} of {len(reference)} isolated sep sources at S/N >= 10 matched "
        f"within 1 pixel ({fraction:.3f})"
    )


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_process_ccd_aperture_fluxes_agree_with_sep(band):
    _, _, _, exposure = _frame(band)
    result = _processed(band)
    catalog = _sep_catalog(band)
    x, y = _src_pixels(result, exposure)
    ra, dec = exposure.wcs.pixel_to_world_values(catalog["x"], catalog["y"])
    refcat = sdss.refcat_in_frame(_refcat(), exposure.wcs, exposure.shape, margin_pix=0)
    is_star = _match(ra, dec, refcat["ra_deg"], refcat["dec_deg"], MATCH_RADIUS_ARCSEC)[0]
    dist = np.hypot(catalog["x"][:, None] - x[None, :], catalog["y"][:, None] - y[None, :])
    nearest = dist.argmin(axis=1)
    matched = (dist.min(axis=1) <= 1.0) & is_star & (catalog["snr"] > APERTURE_SNR_MIN)
    radius_pix = _aperture_radius_pix(result)
    sep_flux, _, _ = sep.sum_circle(
        catalog.meta["sub"], catalog["x"][matched], catalog["y"][matched], radius_pix
    )
    ratio = np.asarray(result.src["ap_flux"])[nearest[matched]] / sep_flux
    assert matched.sum() >= 10
    median = float(np.median(ratio))
    assert abs(median - 1.0) <= APERTURE_MEDIAN_TOLERANCE, (
        f"{band}: median ap_flux / sep = {median:.4f} over {matched.sum()} stars "
        f"(radius {radius_pix:.2f} pix)"
    )


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_process_ccd_background_is_unbiased_between_sources(band):
    """On pixels far from every source (sep's 1.5-sigma segmentation of the calexp, grown by 8
    pixels) and unmasked, the background-subtracted calexp averages to zero within 2 % of the
    sky noise: over a 3" aperture that is under 1 % of an S/N 50 star's flux. (sep's own
    background, used for the aperture comparison above, is 2.9 e-/pixel = 0.12 sigma high in
    r by this measure, measured.)"""
    _, _, _, exposure = _frame(band)
    calexp = _processed(band).calexp
    image = calexp.image.astype(np.float64)
    err = np.sqrt(calexp.variance.astype(np.float64))
    _, segmentation = sep.extract(image, 1.5, err=err, minarea=5, segmentation_map=True)
    sources = ndimage.binary_dilation(segmentation > 0, iterations=8)
    free = ~sources & (exposure.mask == 0)
    assert free.mean() > 0.5
    sky_sigma = float(np.median(err[free]))
    mean_residual = float(image[free].mean())
    assert abs(mean_residual) <= 0.02 * sky_sigma, (
        f"{band}: mean {mean_residual:+.3f} e-/pixel between sources, sky sigma {sky_sigma:.1f}"
    )


def _aperture_radius_pix(result) -> float:
    scale_arcsec = 3600.0 * math.sqrt(abs(np.linalg.det(result.calexp.wcs.pixel_scale_matrix)))
    return _process_ccd_config().aperture_radius_arcsec / scale_arcsec


def _psfield() -> fits.HDUList:
    return read_fits(_input_layout().path("sdss_psfield", ccd=CAMCOL, filter="r"))


def _effective_fwhm_arcsec(image: np.ndarray) -> float:
    from dcflow.stages.psf import FWHM_PER_SIGMA, effective_area

    return (
        FWHM_PER_SIGMA * math.sqrt(effective_area(image) / (4 * math.pi)) * sdss.PIXEL_SCALE_ARCSEC
    )


@needs_data
def test_psfield_psf_width_is_the_double_gaussian_effective_width_not_the_psfs():
    """What psField's ``psf_width`` is, measured on run 6377: the noise-equivalent width of
    photo's double-Gaussian fit (``psf_sigma1_2G``, ``psf_sigma2_2G``, ``psf_b_2G``; measured
    0.8 % above it in every filter, pixel integration), not of photo's own KL PSF at the frame
    centre, which the fit's missing wing leaves 0.6 % (u) and 3.0-4.2 % (g r i z) wider. So
    a PSF model that fits the stars' wings compares with the KL PSF, not with ``psf_width``."""
    hdus = _psfield()
    table = hdus[6].data
    half = 25
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    r2 = (xx * xx + yy * yy).astype(float)
    for index, band in enumerate(BANDS):
        s1, s2, b = (
            float(table[c][0][index]) for c in ("psf_sigma1_2G", "psf_sigma2_2G", "psf_b_2G")
        )
        double_gaussian = np.exp(-r2 / (2 * s1 * s1)) + b * np.exp(-r2 / (2 * s2 * s2))
        psf_width = float(table["psf_width"][0][index])
        assert psf_width == pytest.approx(_effective_fwhm_arcsec(double_gaussian), rel=0.012)
        kl = sdss.psfield_psf_image(hdus, band=band, row=744.0, col=1024.0)
        assert kl.shape == (2 * half + 1, 2 * half + 1)
        assert kl.sum() == pytest.approx(1.0, abs=0.03)
        excess = _effective_fwhm_arcsec(kl) / psf_width - 1
        assert (0.003 if band == "u" else 0.025) < excess < 0.05


def test_psfield_psf_image_by_hand():
    """Two basis images, one constant and one linear in row: a_k = C_k00 + C_k10 0.001 row."""
    c0 = np.zeros(25)
    c0[0] = 1.0
    c1 = np.zeros(25)
    c1[5] = 2.0  # (i=1, j=0): row^1 col^0
    rrows = np.zeros((2, 9))
    rrows[0, 4], rrows[1, 0] = 1.0, 1.0
    columns = [
        fits.Column(name="RROWS", format="9E", array=rrows),
        fits.Column(name="RNROW", format="1J", array=[3, 3]),
        fits.Column(name="RNCOL", format="1J", array=[3, 3]),
        fits.Column(name="c", format="25E", array=np.stack([c0, c1])),
        fits.Column(name="nrow_b", format="1J", array=[1, 2]),
        fits.Column(name="ncol_b", format="1J", array=[1, 1]),
    ]
    kl = fits.BinTableHDU.from_columns(columns)
    hdus = fits.HDUList([fits.PrimaryHDU(), kl.copy(), kl.copy()])
    image = sdss.psfield_psf_image(hdus, band="g", row=250.0, col=900.0)
    assert image[1, 1] == 1.0 and image[0, 0] == pytest.approx(0.5) and image.sum() == 1.5
    with pytest.raises(InputDataError, match=r"lacks the KL PSF table of filter r \(HDU 3\)"):
        sdss.psfield_psf_image(hdus, band="r", row=0.0, col=0.0)
    bad = fits.BinTableHDU.from_columns(columns[:3])
    with pytest.raises(InputDataError, match="KL PSF table of u lacks column c"):
        sdss.psfield_psf_image(fits.HDUList([fits.PrimaryHDU(), bad]), band="u", row=0.0, col=0.0)


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_psf_model_width_matches_the_stars_and_photo(band):
    """The PSF model's adaptive-moment FWHM at the bright isolated stars is within 3 % of theirs
    (median over the stars; measured ratios 0.989-1.002), and its noise-equivalent width within 3 %
    of photo's own PSF (psField's KL PSF at the same stars, same 51 x 51 stamp; measured
    0.98-1.01; benchmarks/psf_sdss.py: u 1.010 g 1.005 r 0.981 i 0.985 z 0.994). Against
    psField's ``psf_width`` it is 2-5 % wider (1.017 / 1.034 / 1.023 / 1.018 / 1.047), because
    that is the width of photo's double Gaussian, which has no wing (test above). ``PSFFWHM``
    is the Moffat's half maximum, which for beta ~2.5
    is ~20 % below both (benchmarks/psf_sdss.py prints all of them)."""
    from dcflow.stages.psf import FWHM_PER_SIGMA
    from dcflow.stages.stamps import adaptive_moments, extract_stamps

    result = _processed(band)
    src = result.src
    x, y = np.asarray(src["x"]), np.asarray(src["y"])
    near = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    stars = np.nonzero((src["flags"] == 0) & (src["snr"] > 100) & ((near < 24).sum(axis=1) == 1))[0]
    assert stars.size >= 8
    half = 12
    xi, yi = np.rint(x[stars]).astype(int), np.rint(y[stars]).astype(int)
    stamps, _ = extract_stamps(result.calexp.image, xi, yi, half, fill=0.0)
    offsets = np.arange(-half, half + 1)
    mxx, myy, mxy, flag = adaptive_moments(
        stamps.astype(float), x[stars] - xi, y[stars] - yi, offsets, 1.5
    )
    star_fwhm = FWHM_PER_SIGMA * np.median(((mxx * myy - mxy**2) ** 0.25)[~flag])
    # The model at each star's position and phase (the width varies over the frame by ~10 %).
    models = np.stack(
        [
            result.psf_fit.psf_at(xs, ys).render(half, xs - i, ys - k)
            for xs, ys, i, k in zip(x[stars], y[stars], xi, yi, strict=True)
        ]
    )
    pxx, pyy, pxy, pflag = adaptive_moments(models, x[stars] - xi, y[stars] - yi, offsets, 1.5)
    model_fwhm = FWHM_PER_SIGMA * np.median(((pxx * pyy - pxy**2) ** 0.25)[~pflag])
    assert model_fwhm == pytest.approx(star_fwhm, rel=0.03)
    # Like with like: both pixelised, centred on a pixel, on psField's 51 x 51 stamp.
    hdus = _psfield()
    ratio = [
        _effective_fwhm_arcsec(result.psf_fit.psf_at(xs, ys).render(25))
        / _effective_fwhm_arcsec(sdss.psfield_psf_image(hdus, band=band, row=ys, col=xs))
        for xs, ys in zip(x[stars], y[stars], strict=True)
    ]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.03)


@needs_data
@pytest.mark.parametrize("band", ["g", "r", "i"])
def test_reference_stars_are_point_like(band):
    """Stripe 82 reference stars (all stars) matched at S/N > 30: at most 3 % extended
    (measured 1.1-1.4 %); the other bright sources, mostly galaxies, are mostly extended."""
    result = _processed(band)
    _, _, frame = _prepared(band)
    src = result.src
    ok, _, _, _ = _match(
        src["ra_deg"], src["dec_deg"], frame.refcat["ra_deg"], frame.refcat["dec_deg"], 1.0
    )
    bright = np.asarray(src["snr"]) > 30
    ext = np.asarray(src["extendedness"])
    assert (ok & bright).sum() >= 50
    assert np.nanmean(ext[ok & bright]) <= 0.03
    assert np.nanmean(ext[~ok & bright]) >= 0.6


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_process_ccd_blends_are_real_second_peaks(band):
    """A source is blended only when its footprint holds a second peak that stands out from
    the noise (prominence >= 5 sigma). Counting every local maximum of the smoothed image,
    noise bumps on bright profiles made 14-32 % of the sources blended (u g r i; 3 % in z);
    measured now 1.6-4.6 %."""
    from dcflow.stages.measurement import SourceFlag

    src = _processed(band).src
    blended = (np.asarray(src["flags"]) & SourceFlag.BLENDED) != 0
    assert blended.mean() <= 0.08, f"{band}: {100 * blended.mean():.1f} % blended"


@needs_data
@pytest.mark.parametrize("band", BANDS)
def test_process_ccd_flux_errors_hold_the_sky_noise_the_variance_plane_misses(band):
    """Fluxes at empty positions scatter more than the variance plane predicts, the more the
    larger the footprint (faint undetected sources, correlated pixels): measured PSF 1.00-1.08,
    3" aperture 1.03-1.26 times. The header records both; the src errors include the excess."""
    result = _processed(band)
    h = result.calexp.header
    assert 0.95 <= h["SKYNPSF"] <= 1.15
    assert h["SKYNPSF"] - 0.01 <= h["SKYNAP"] <= 1.4
    src = result.src
    faint = np.asarray(src["snr"]) < 10  # sky-limited: the excess dominates the change
    ap_err = np.asarray(src["ap_flux_err"])[faint]
    calexp = result.calexp
    r = _aperture_radius_pix(result)
    from dcflow.stages.measurement import aperture_fluxes

    _, plane_err = aperture_fluxes(
        calexp.image,
        calexp.variance,
        np.asarray(src["x"])[faint],
        np.asarray(src["y"])[faint],
        radius_pix=r,
    )
    ratio = float(np.median(ap_err / plane_err))
    assert ratio == pytest.approx(h["SKYNAP"], rel=0.1)
