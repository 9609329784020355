"""Placeholder campaigns for orchestration tests: header-only raws, payload noop.

The raws are FITS files with a primary header only (the registry's keywords and a pointing),
the reference and truth catalogs are empty files: the noop payload never opens them, so a
campaign of hundreds of jobs is set up in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from astropy.io import fits

from dcflow.campaign.registry import ingest
from dcflow.layout import Layout
from dcflow.simulate import FE55_INSTRUMENT, SENSOR_EXPOSURE_OFFSETS

__all__ = ["write_noop_campaign"]

RA0_DEG, DEC0_DEG = 150.0, 2.2


def _raw(
    path: Path,
    *,
    visit: int,
    ccd: int,
    obstype: str,
    band: str,
    ra_deg: float,
    instrument: str = "cfht_sim",
) -> str:
    header = fits.Header()
    header.update(
        INSTRUME=instrument,
        EXPNUM=visit,
        CCDNUM=ccd,
        OBSTYPE=obstype.upper(),
        FILTER=band,
        EXPTIME=0.0 if obstype == "bias" else 60.0,
        MJD=60000.0 + visit / 1000.0,
        RA_DEG=ra_deg,
        DEC_DEG=DEC0_DEG,
    )
    header.rename_keyword("MJD", "MJD-OBS")
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(header=header).writeto(path, overwrite=True)
    return str(path)


def write_noop_campaign(
    root: Path,
    *,
    name: str = "noop",
    visits_per_filter: int = 4,
    n_ccds: int = 2,
    filters: tuple[str, ...] = ("g", "r"),
    n_tracts: int = 2,
    fe55_sensors: tuple[int, ...] = (0,),
    payload: str = "noop",
    shards: dict | None = None,
) -> Path:
    """Write and ingest a placeholder campaign under ``root``; return its config path.

    Visits walk east along the equator-ish strip so that consecutive visits fall on
    different patches and tracts (2 x 2 patches per tract, tracts 0.3 deg apart).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    step_deg = 0.3 * max(n_tracts - 1, 1) / max(visits_per_filter * len(filters) - 1, 1)
    config = {
        "campaign": {"name": name, "instrument": "cfht_sim", "payload": payload},
        "layout": {"input_root": str(root / "input"), "output_root": str(root / "output")},
        "skymap": {
            "tract_ra_deg": [RA0_DEG + 0.3 * i for i in range(n_tracts)],
            "tract_dec_deg": [DEC0_DEG] * n_tracts,
            "pixel_scale_arcsec": 0.2,
            "patch_inner_pixels": 1000,
            "patch_border_pixels": 50,
            "n_patches": 2,
            "field_radius_deg": 0.04,
        },
        "fe55": {"sensors": list(fe55_sensors), "exposures": 2},
        "shards": shards or {},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    from dcflow.config_schema import load_config

    layout = Layout.from_config(load_config(path))
    raw = Path(layout.input_root)
    paths = []
    visit = 1
    for ccd in range(n_ccds):
        for i in range(2):
            p = raw / f"bias/{ccd}/bias_{i}_{ccd}.fits"
            paths.append(_raw(p, visit=100 + i, ccd=ccd, obstype="bias", band="none", ra_deg=0))
        for j, band in enumerate(filters):
            for i in range(2):
                p = raw / f"flat/{ccd}/flat_{band}_{i}_{ccd}.fits"
                v = 200 + 10 * j + i
                paths.append(_raw(p, visit=v, ccd=ccd, obstype="flat", band=band, ra_deg=0))
    visit = 1001
    n_science = visits_per_filter * len(filters)
    for k in range(n_science):
        band = filters[k % len(filters)]
        ra = RA0_DEG - 0.03 + k * step_deg
        for ccd in range(n_ccds):
            p = raw / f"science/{visit}/raw_{visit}_{ccd}.fits"
            paths.append(_raw(p, visit=visit, ccd=ccd, obstype="object", band=band, ra_deg=ra))
        visit += 1
    datasets = {"fe55": "fe55_raw", "sensor_flat": "fe55_flat", "sensor_bias": "fe55_bias"}
    for ccd in fe55_sensors:  # header-only sensor exposures, numbered as dcflow simulate does
        for exposure in range(2):
            for obstype, offset in SENSOR_EXPOSURE_OFFSETS.items():
                p = Path(layout.path(datasets[obstype], ccd=ccd, exposure=exposure))
                paths.append(
                    _raw(p, visit=offset + exposure, ccd=ccd, obstype=obstype, band="none",
                         ra_deg=0, instrument=FE55_INSTRUMENT)
                )  # fmt: skip
    ingest(paths, layout.path("registry"), progress_every=0)
    for dataset_type in ("refcat", "truth"):
        target = Path(layout.path(dataset_type, instrument="cfht_sim"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("placeholder\n")
    return path
