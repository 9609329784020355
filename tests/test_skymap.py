"""Sky map geometry against hand-worked boxes (tract: 3x3 patches of 100 px, border 10 px)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

from dcflow.campaign.skymap import (
    BBox,
    SkyMapConfig,
    ccd_footprint,
    circle_footprint,
    find_patch,
    make_tracts,
    overlapping_tract_patches,
    parse_patch_name,
    patch_info,
    patch_wcs,
    patches_for_calexp,
    patches_for_pointings,
    patches_overlapping,
    sky_to_tract_pixels,
    tract_wcs,
)

CONFIG = SkyMapConfig(
    tract_ra_deg=(150.0, 10.0),
    tract_dec_deg=(2.0, -30.0),
    pixel_scale_arcsec=0.2,
    patch_inner_pixels=100,
    patch_border_pixels=10,
    n_patches=3,
)
TRACT = make_tracts(CONFIG)[0]


def ccd_wcs_at(x0: float, y0: float, angle_deg: float = 0.0) -> WCS:
    """A CCD WCS whose pixel (0, 0) is tract pixel (x0, y0), rotated by angle_deg."""
    wcs = tract_wcs(TRACT)
    theta = np.radians(angle_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    scale = CONFIG.pixel_scale_arcsec / 3600.0
    wcs.wcs.cd = np.diag([-scale, scale]) @ rot
    # Tract pixel p maps to CCD pixel rot^-1 (p - p0): choose crpix so that CCD (0,0) -> (x0,y0).
    centre = (TRACT.size_pixels - 1) / 2.0
    offset = np.linalg.solve(rot, np.array([centre - x0, centre - y0]))
    wcs.wcs.crpix = offset + 1.0
    return wcs


def names(patches) -> list[str]:
    return [p.name for p in patches]


def test_tract_and_patch_boxes_hand_worked():
    assert TRACT.size_pixels == 320
    patch = patch_info(TRACT, 1, 0)
    assert patch.inner == BBox(110, 10, 210, 110)
    assert patch.outer == BBox(100, 0, 220, 120)
    assert patch.shape == (120, 120)
    assert patch_info(TRACT, 2, 2).outer == BBox(200, 200, 320, 320)
    assert patch.name == "1,0"
    assert parse_patch_name("1,0") == (1, 0)


def test_patch_wcs_shares_the_tract_grid():
    patch = patch_info(TRACT, 2, 1)
    ra, dec = tract_wcs(TRACT).pixel_to_world_values(237.25, 151.5)
    x, y = patch_wcs(TRACT, patch).world_to_pixel_values(ra, dec)
    assert x == pytest.approx(237.25 - 200, abs=1e-6)
    assert y == pytest.approx(151.5 - 100, abs=1e-6)
    # Tangent point at the grid centre, pixel scale as configured.
    tx, ty, front = sky_to_tract_pixels(TRACT, 150.0, 2.0)
    assert (tx[0], ty[0], front[0]) == (pytest.approx(159.5), pytest.approx(159.5), True)
    _ra1, dec1 = tract_wcs(TRACT).pixel_to_world_values(159.5, 169.5)
    assert (dec1 - 2.0) * 3600 == pytest.approx(2.0, rel=1e-6)


def test_ccd_inside_one_patch():
    # CCD covers tract x [149.5, 189.5), y [49.5, 79.5): only patch 1,0's outer box.
    ra, dec = ccd_footprint(ccd_wcs_at(150, 50), (30, 40))
    assert names(patches_overlapping(TRACT, ra, dec)) == ["1,0"]


def test_ccd_on_a_patch_corner_overlaps_four():
    ra, dec = ccd_footprint(ccd_wcs_at(95, 95), (30, 30))
    assert names(patches_overlapping(TRACT, ra, dec)) == ["0,0", "1,0", "0,1", "1,1"]


def test_ccd_in_overlap_strip_only():
    # x [101.5, 117.5) lies in both patch 0 outer [-0.5, 119.5) and patch 1 outer [99.5, ...).
    ra, dec = ccd_footprint(ccd_wcs_at(102, 150), (20, 16))
    assert names(patches_overlapping(TRACT, ra, dec)) == ["0,1", "1,1"]


def test_rotated_ccd_uses_exact_polygon_not_bounding_box():
    # A 45-degree diamond centred on tract (185, 185) with half-diagonal 20 px: its bounding
    # box reaches patch 2,2 (from 199.5) but its edge x + y = 390 stays below that corner (399).
    side = 20 * np.sqrt(2)
    theta = np.radians(45)
    # CCD pixel (-0.5, -0.5) corner must land at (185, 165): place pixel (0,0) half a pixel in.
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    p0 = np.array([185.0, 165.0]) + rot @ np.array([0.5, 0.5])
    ra, dec = ccd_footprint(ccd_wcs_at(p0[0], p0[1], 45.0), (round(side), round(side)))
    x, y, _ = sky_to_tract_pixels(TRACT, ra, dec)
    assert x.max() > 199.5 and y.max() > 199.5  # the bounding box touches patch 2,2
    assert names(patches_overlapping(TRACT, ra, dec)) == ["1,1", "2,1", "1,2"]


def test_polygon_outside_or_behind_tract():
    ra, dec = ccd_footprint(ccd_wcs_at(400, 400), (30, 30))
    assert patches_overlapping(TRACT, ra, dec) == []
    # The antipode of the tangent point is not projectable: no overlap, no exception.
    ra, dec = circle_footprint(330.0, -2.0, 0.01)
    assert patches_overlapping(TRACT, ra, dec) == []


def test_circle_footprint_contains_circle_and_selects_patches():
    ra, dec = circle_footprint(150.0, 2.0, 1.0 / 3600.0 * 3)  # 15 px radius at the centre
    x, y, _ = sky_to_tract_pixels(TRACT, ra, dec)
    radius_px = np.hypot(x - 159.5, y - 159.5)
    assert radius_px.min() >= 15.0 - 1e-6
    assert radius_px.max() < 15.2
    # Centre (159.5, 159.5) +- 15 px stays inside patch 1,1's inner box [110, 210).
    assert names(patches_overlapping(TRACT, ra, dec)) == ["1,1"]
    ra, dec = circle_footprint(150.0, 2.0, 0.5 / 3600.0 * 120)
    assert len(patches_overlapping(TRACT, ra, dec)) == 9


def test_overlapping_tract_patches_over_several_tracts():
    tracts = make_tracts(CONFIG)
    ra, dec = ccd_footprint(ccd_wcs_at(150, 50), (30, 40))
    assert overlapping_tract_patches(tracts, ra, dec) == [(0, "1,0")]


def test_find_patch_gives_exactly_one_owner():
    rng = np.random.default_rng(3)
    xs = rng.uniform(9.5, 309.5, 500)
    ys = rng.uniform(9.5, 309.5, 500)
    ra, dec = tract_wcs(TRACT).pixel_to_world_values(xs, ys)
    for x, y, r, d in zip(xs, ys, ra, dec, strict=True):
        patch = find_patch(TRACT, r, d)
        owners = [
            (i, j)
            for i in range(3)
            for j in range(3)
            if patch_info(TRACT, i, j).inner.contains(x, y)
        ]
        assert owners == [(patch.patch_x, patch.patch_y)]
        assert patch.outer.contains(x, y)
    ra, dec = tract_wcs(TRACT).pixel_to_world_values(3.0, 150.0)  # in the tract border only
    assert find_patch(TRACT, ra, dec) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tract_ra_deg": (1.0, 2.0), "tract_dec_deg": (0.0,)}, "same length"),
        ({"tract_ra_deg": (), "tract_dec_deg": ()}, "at least one"),
        ({"pixel_scale_arcsec": 0.0}, "pixel_scale_arcsec must be > 0"),
        ({"n_patches": 0}, "n_patches must be >= 1"),
        ({"tract_dec_deg": (95.0,)}, "tract_dec_deg must be <= 90"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SkyMapConfig(**kwargs)


def test_argument_validation():
    with pytest.raises(ValueError, match="patch_x must be in"):
        patch_info(TRACT, 3, 0)
    with pytest.raises(ValueError, match="patch name must be"):
        parse_patch_name("1-2")
    with pytest.raises(ValueError, match="same length >= 3"):
        patches_overlapping(TRACT, [1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="radius_deg"):
        circle_footprint(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="shape must be positive"):
        ccd_footprint(tract_wcs(TRACT), (0, 3))


def test_planning_and_run_time_overlaps():
    tracts = make_tracts(CONFIG)
    centre = tract_wcs(TRACT).pixel_to_world_values(159.5, 159.5)
    corner = tract_wcs(TRACT).pixel_to_world_values(105.0, 105.0)
    far = (200.0, 40.0)
    radius = 5 * 0.2 / 3600  # 5 tract pixels
    plan = patches_for_pointings(
        tracts,
        [(1, *centre), (2, *corner), (3, *far), (1, *corner)],  # a repeated visit is ignored
        field_radius_deg=radius,
    )
    # Visit 1 sits in patch 1,1's inner box; visit 2 at (105, 105) within 5 px of the
    # 0/1 overlap strips [99.5, 119.5): all four patches around it.
    assert plan == {
        (0, "0,0"): [2],
        (0, "0,1"): [2],
        (0, "1,0"): [2],
        (0, "1,1"): [1, 2],
    }
    assert patches_for_calexp(tracts, ccd_wcs_at(150, 50), (30, 40)) == [(0, "1,0")]
