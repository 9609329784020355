"""The simulator's transients, variables and movers: schedule, light curves, motion, rendering."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dcflow.instruments import cfht_sim

CONFIG = cfht_sim.SimConfig(
    n_ccds=1, ccd_nx=512, ccd_ny=600, filters=("r",), visits_per_filter=4, visits_per_night=2,
    revisit_minutes=30.0, transients_per_deg2=20000.0, variables_per_deg2=8000.0,
    movers_per_deg2=8000.0,
)  # fmt: skip


def test_nights_of_revisits():
    mjd = [e.mjd_obs for e in cfht_sim.campaign_exposures(CONFIG) if e.obstype == "object"]
    assert np.allclose(np.diff(mjd), [30.0 / 1440.0, 1.0 - 30.0 / 1440.0, 30.0 / 1440.0], atol=1e-5)


def test_light_curves_and_motion():
    catalog = cfht_sim.make_variable_catalog(CONFIG)
    kinds = set(catalog["kind"])
    assert kinds == {"transient", "variable", "mover"}
    assert np.all(catalog["id"] >= cfht_sim.VARIABLE_ID_OFFSET)
    t = catalog[catalog["kind"] == "transient"][:1]
    t0, tau, peak = float(t["t0_mjd"][0]), float(t["timescale_d"][0]), float(t["mag"][0])
    _, _, before = cfht_sim.variable_epochs(t, t0 - 0.01)
    _, _, later = cfht_sim.variable_epochs(t, t0 + tau)
    assert np.isinf(before[0])
    assert later[0] == pytest.approx(peak + 2.5 / math.log(10.0))  # flux down by e
    m = catalog[catalog["kind"] == "mover"][:1]
    ra0, dec0, _ = cfht_sim.variable_epochs(m, float(m["t0_mjd"][0]))
    ra1, dec1, _ = cfht_sim.variable_epochs(m, float(m["t0_mjd"][0]) + 1.0 / 24.0)
    moved = math.hypot((ra1[0] - ra0[0]) * math.cos(math.radians(dec0[0])), dec1[0] - dec0[0])
    rate = moved * 3600.0  # arcsec per hour
    assert CONFIG.mover_rate_min_arcsec_per_hour - 0.01 <= rate
    assert rate <= CONFIG.mover_rate_max_arcsec_per_hour + 0.01


def test_rendered_where_the_truth_says():
    catalog = cfht_sim.make_variable_catalog(CONFIG)
    epochs = cfht_sim.variable_truth_table(CONFIG, catalog)
    spec = next(e for e in cfht_sim.campaign_exposures(CONFIG) if e.obstype == "object")
    stars = cfht_sim.make_truth_catalog(CONFIG)[:0]
    rows = epochs[(epochs["visit"] == spec.visit) & np.isfinite(epochs["mag"])]
    rows = rows[(rows["x"] > 20) & (rows["x"] < 490) & (rows["y"] > 20) & (rows["y"] < 580)]
    assert len(rows) >= 3
    with_sources = cfht_sim.simulate_ccd(CONFIG, spec, 0, stars=stars, variables=catalog)
    without = cfht_sim.simulate_ccd(CONFIG, spec, 0, stars=stars)
    layout = cfht_sim.ccd_layout(CONFIG)
    excess = []
    for amp in layout.amps:
        block = with_sources.raw[amp.data].astype(float) - without.raw[amp.data].astype(float)
        excess.append((amp, block[:, ::-1] if amp.flip_x else block))
    image = np.zeros((CONFIG.ccd_ny, CONFIG.ccd_nx))
    for amp, block in excess:
        image[amp.assembled] = block
    for row in rows:
        x, y = round(row["x"]), round(row["y"])
        assert image[y - 2 : y + 3, x - 2 : x + 3].sum() > 0
