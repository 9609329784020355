"""DIAObject association and tracklets against a simulated truth of static and moving sources.

The sky: static variable sources (each detected in a random subset of 12 visits over 3 nights
of 4 visits, 30 minutes apart) with 0.1" position noise, some in close pairs 2" apart, plus
movers at 3-10"/hour that leave one DIASource per visit. Association must put each static
source's DIASources in one DIAObject (completeness) and no two sources' DIASources together
(purity); tracklets must link the movers.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from dcflow.stages.dia_association import (
    DiaAssociationConfig,
    associate_dia_sources,
    dia_object_columns,
    find_tracklets,
)

FILTERS = ("g", "r")
SIGMA_ARCSEC = 0.1


def _sky(seed: int = 7, n_static: int = 400, n_movers: int = 20):
    rng = np.random.default_rng(seed)
    ra0, dec0 = 150.0, 2.2
    visits = np.arange(1001, 1013)
    mjd = np.array([60000.1 + (k // 4) + (k % 4) * 30.0 / 1440.0 for k in range(len(visits))])
    band = np.array(["g", "g", "r", "r"] * 3)
    # static sources; a quarter have a neighbour 2" away
    ra_s = ra0 + rng.uniform(-0.1, 0.1, n_static)
    dec_s = dec0 + rng.uniform(-0.1, 0.1, n_static)
    k = n_static // 4
    ra_s[:k] = ra_s[k : 2 * k] + 2.0 / 3600.0 / np.cos(np.radians(dec0))
    dec_s[:k] = dec_s[k : 2 * k]
    flux = rng.uniform(500.0, 5000.0, n_static)
    rows, truth = [], []
    for v, t, b in zip(visits, mjd, band, strict=True):
        seen = np.flatnonzero(rng.uniform(size=n_static) < 0.6)
        for s in seen:
            rows.append((v, t, b, ra_s[s], dec_s[s], flux[s], False))
            truth.append(s)
    # movers: seen in every visit of the night they are in
    speed = rng.uniform(3.0, 10.0, n_movers) / 3600.0 * 24.0  # deg/day
    angle = rng.uniform(0, 2 * np.pi, n_movers)
    night = rng.integers(0, 3, n_movers)
    ra_m = ra0 + rng.uniform(-0.1, 0.1, n_movers)
    dec_m = dec0 + rng.uniform(-0.1, 0.1, n_movers)
    for m in range(n_movers):
        for v, t, b in zip(visits, mjd, band, strict=True):
            if int(t - 60000.1 + 1e-6) != night[m]:
                continue
            dt = t - (60000.1 + night[m])
            ra = ra_m[m] + speed[m] * np.cos(angle[m]) * dt / np.cos(np.radians(dec0))
            rows.append((v, t, b, ra, dec_m[m] + speed[m] * np.sin(angle[m]) * dt, 800.0, False))
            truth.append(n_static + m)
    n = len(rows)
    table = Table(rows=rows, names=("visit", "midpointMjdTai", "band", "ra", "dec", "psfFlux",
                                    "isNegative"))  # fmt: skip
    noise = rng.normal(0.0, SIGMA_ARCSEC / 3600.0, (2, n))
    table["ra"] += noise[0] / np.cos(np.radians(dec0))
    table["dec"] += noise[1]
    table["raErr"] = np.full(n, SIGMA_ARCSEC / 3600.0)
    table["decErr"] = np.full(n, SIGMA_ARCSEC / 3600.0)
    table["psfFluxErr"] = np.full(n, 50.0)
    table["psfFlux"] += rng.normal(0.0, 50.0, n)
    table["diaSourceId"] = np.asarray(table["visit"]) * 10**8 + np.arange(n)
    return table, np.array(truth), n_static


def _completeness_purity(object_ids, truth, static):
    """Per truth source: all its DIASources in one DIAObject; per DIAObject: one truth source."""
    keep = truth < static
    pairs = set(zip(truth[keep].tolist(), object_ids[keep].tolist(), strict=True))
    per_truth: dict[int, set] = {}
    per_object: dict[int, set] = {}
    for t, o in pairs:
        per_truth.setdefault(t, set()).add(o)
        per_object.setdefault(o, set()).add(t)
    complete = np.mean([len(v) == 1 for v in per_truth.values()])
    pure = np.mean([len(v) == 1 for v in per_object.values()])
    return complete, pure


def test_association_completeness_purity_and_summaries():
    table, truth, static = _sky()
    result = associate_dia_sources(table, filters=FILTERS)
    complete, pure = _completeness_purity(result.dia_object_id, truth, static)
    assert complete >= 0.98, complete
    assert pure >= 0.98, pure
    objects = result.dia_objects
    assert objects.colnames == list(dia_object_columns(FILTERS))
    # nDiaSources and per-filter counts add up to the DIASources of each object
    ids, n = np.unique(result.dia_object_id, return_counts=True)
    counts = dict(zip(ids.tolist(), n.tolist(), strict=True))
    for row in objects:
        assert row["nDiaSources"] == counts[int(row["diaObjectId"])]
        assert row["g_psfFluxNdata"] + row["r_psfFluxNdata"] == row["nDiaSources"]
    # the weighted mean of a static source's flux is within 4 sigma of its truth
    multi = objects[objects["g_psfFluxNdata"] >= 3]
    assert len(multi) > 50
    assert np.all(np.isfinite(multi["g_psfFluxSigma"]))
    # first/last epochs bracket the DIASources
    assert np.all(objects["firstDiaSourceMjdTai"] <= objects["lastDiaSourceMjdTai"])


def test_tracklets_link_movers():
    table, truth, static = _sky()
    result = associate_dia_sources(table, filters=FILTERS)
    movers = np.unique(truth[truth >= static])
    tracklets = result.tracklets
    truth_of = dict(zip(np.asarray(table["diaSourceId"]).tolist(), truth.tolist(), strict=True))
    found = 0
    for mover in movers:
        ids = np.asarray(table["diaSourceId"])[truth == mover]
        in_tracklets = tracklets[np.isin(tracklets["diaSourceId"], ids)]
        if len(in_tracklets) >= 2 and len(np.unique(in_tracklets["trackletId"])) == 1:
            found += 1
    assert found / len(movers) >= 0.9, (found, len(movers))
    # every tracklet is made of one mover's DIASources
    for tid in np.unique(tracklets["trackletId"]):
        members = {
            truth_of[int(i)] for i in tracklets["diaSourceId"][tracklets["trackletId"] == tid]
        }
        assert len(members) == 1 and next(iter(members)) >= static
    # the fitted rate is the simulated one (3..10 arcsec/hour)
    rate = np.hypot(tracklets["raRate"], tracklets["decRate"]) * 3600.0 / 24.0
    assert np.all((rate > 2.5) & (rate < 11.0))


def test_crowded_night_pairs_by_assignment_not_greedily():
    """Two movers 5" apart, seen 30 minutes apart: the best-fitting single pair (A1, B2:
    equal fluxes) is a false one, and taking it first would leave B1 with A2 (both wrong)."""
    dec0 = 10.0
    offsets = {  # (visit, mover): x arcsec, flux
        (1, "A"): (0.0, 100.0), (2, "A"): (2.0, 108.0),
        (1, "B"): (5.0, 92.0), (2, "B"): (7.0, 100.0),
    }  # fmt: skip
    rows = []
    for k, ((visit, _), (x, flux)) in enumerate(sorted(offsets.items())):
        rows.append(
            (k + 1, visit, "r", 60000.5 + (visit - 1) / 48.0,
             150.0 + x / 3600.0 / np.cos(np.radians(dec0)), dec0,
             0.05 / 3600.0, 0.05 / 3600.0, flux, 10.0, False)
        )  # fmt: skip
    names = ("diaSourceId", "visit", "band", "midpointMjdTai", "ra", "dec", "raErr",
             "decErr", "psfFlux", "psfFluxErr", "isNegative")  # fmt: skip
    mover_of = {k + 1: m for k, ((_, m), _) in enumerate(sorted(offsets.items()))}
    tracklets = find_tracklets(Table(rows=rows, names=names))
    groups = {}
    for tid, sid in zip(tracklets["trackletId"], tracklets["diaSourceId"], strict=True):
        groups.setdefault(int(tid), set()).add(mover_of[int(sid)])
    assert sorted(map(sorted, groups.values())) == [["A"], ["B"]]
    assert len(tracklets) == 4


def test_ids_deterministic_under_rerun_of_one_visit():
    table, _, _ = _sky()
    first = associate_dia_sources(table, filters=FILTERS)
    # a rerun of visit 1005 writes the same DIASources, perhaps in another row order
    rng = np.random.default_rng(3)
    again = table[rng.permutation(len(table))]
    second = associate_dia_sources(again, filters=FILTERS)
    by_source_1 = dict(
        zip(table["diaSourceId"].tolist(), first.dia_object_id.tolist(), strict=True)
    )
    by_source_2 = dict(
        zip(again["diaSourceId"].tolist(), second.dia_object_id.tolist(), strict=True)
    )
    assert by_source_1 == by_source_2
    assert np.array_equal(first.dia_objects["diaObjectId"], second.dia_objects["diaObjectId"])


def test_empty_input_gives_tables_with_all_columns():
    table, _, _ = _sky()
    result = associate_dia_sources(table[:0], filters=FILTERS)
    assert len(result.dia_objects) == 0
    assert result.dia_objects.colnames == list(dia_object_columns(FILTERS))
    assert len(result.tracklets) == 0 and "trackletId" in result.tracklets.colnames
    assert len(find_tracklets(table[:1])) == 0


def test_errors_name_the_problem():
    table, _, _ = _sky()
    with pytest.raises(ValueError, match=r"lacks column\(s\) psfFluxErr"):
        associate_dia_sources(table[[c for c in table.colnames if c != "psfFluxErr"]],
                              filters=FILTERS)  # fmt: skip
    bad = table.copy()
    bad["ra"][0] = np.nan
    with pytest.raises(ValueError, match="column ra has 1 non-finite"):
        associate_dia_sources(bad, filters=FILTERS)
    dup = table.copy()
    dup["diaSourceId"][1] = dup["diaSourceId"][0]
    with pytest.raises(ValueError, match="diaSourceId values are not unique"):
        associate_dia_sources(dup, filters=FILTERS)
    with pytest.raises(ValueError, match="radius_arcsec"):
        DiaAssociationConfig(radius_arcsec=0.0)
