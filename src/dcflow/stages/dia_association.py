"""DIAObjects (diaObject) and tracklets: DIASources associated across visits, per patch.

Association follows Rubin's ap_association: the DIASources of one visit at a time, in visit
order, are matched to the DIAObjects built from the earlier visits. Candidates are the
DIAObjects within ``radius_arcsec`` (a k-d tree on unit vectors, the only gate); each candidate
pair costs its positional chi^2, ``d^2 / (sigma_source^2 + sigma_object^2)``; one minimum-cost
bipartite assignment (`scipy.optimize.linear_sum_assignment`) decides, so that two DIASources
of a visit never claim one DIAObject. An unmatched DIASource starts a DIAObject whose id is its
own ``diaSourceId`` (as in the Rubin schema), so the ids depend only on the DIASources and the
visit order: a rerun of one visit that reproduces its diaSrc gives the same ids.

Per DIAObject, the light-curve summary of the Rubin DiaObject table: the number of DIASources,
first and last epoch, and per filter the number, weighted mean, its error and the scatter of
the PSF flux of the difference (negative where the source is fainter than in the template).

Tracklets (the first step of moving-object processing) link positive DIASources that do not
belong to a DIAObject with another positive DIASource, taken two or more within one night,
whose motion is faster than ``tracklet_min_rate_arcsec_per_hour`` (slower ones associate as
static) and slower than ``tracklet_max_rate_deg_per_day``, with consistent fluxes. The
seed pairs are a minimum-cost assignment (flux consistency plus a log-uniform prior on the
rate) rather than the greedy best pair, and every other DIASource of the night within
``tracklet_tolerance_arcsec`` of a pair's line joins it.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from dcflow.configs import check_fields, config_field

__all__ = [
    "DIA_ASSOCIATION_INPUT_COLUMNS",
    "DiaAssociationConfig",
    "DiaAssociationResult",
    "associate_dia_sources",
    "dia_object_columns",
    "find_tracklets",
]

log = logging.getLogger(__name__)

DIA_ASSOCIATION_INPUT_COLUMNS = (
    "diaSourceId",
    "visit",
    "band",
    "midpointMjdTai",
    "ra",
    "dec",
    "raErr",
    "decErr",
    "psfFlux",
    "psfFluxErr",
    "isNegative",
)
"""Columns of the diaSrc rows `associate_dia_sources` reads (degrees, days, flux units)."""

_ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0


@dataclass(frozen=True, slots=True)
class DiaAssociationConfig:
    """Configuration of `associate_dia_sources` and `find_tracklets`."""

    radius_arcsec: float = config_field(
        1.0, "Candidate search radius around a DIAObject (arcsec)", exclusive_minimum=0.0
    )
    position_error_floor_arcsec: float = config_field(
        0.05,
        "Added in quadrature to every position error (astrometric calibration error, arcsec)",
        minimum=0.0,
    )
    tracklet_min_rate_arcsec_per_hour: float = config_field(
        1.0,
        "Slowest motion linked into a tracklet (arcsec/hour); slower movers look static",
        exclusive_minimum=0.0,
    )
    tracklet_max_rate_deg_per_day: float = config_field(
        2.0, "Fastest motion linked into a tracklet (deg/day)", exclusive_minimum=0.0
    )
    tracklet_max_gap_hours: float = config_field(
        12.0, "Longest time between two DIASources of one tracklet (hours)", exclusive_minimum=0.0
    )
    tracklet_max_flux_chi2: float = config_field(
        25.0,
        "Largest (f1 - f2)^2 / (e1^2 + e2^2) of the PSF fluxes of two DIASources of a tracklet "
        "(a mover's brightness is nearly constant within a night)",
        exclusive_minimum=0.0,
    )
    tracklet_tolerance_arcsec: float = config_field(
        0.7,
        "Largest distance of a DIASource from the tracklet's predicted position (arcsec)",
        exclusive_minimum=0.0,
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class DiaAssociationResult:
    """DIASources associated into DIAObjects, and tracklets.

    Attributes
    ----------
    dia_object_id : numpy.ndarray
        int64 per input row (input order): the ``diaObjectId`` of its DIAObject.
    dia_objects : astropy.table.Table
        One row per DIAObject (`dia_object_columns`), sorted by ``diaObjectId``.
    tracklets : astropy.table.Table
        One row per DIASource in a tracklet: ``trackletId`` (the smallest ``diaSourceId`` of
        the tracklet), ``diaSourceId``, ``midpointMjdTai``, ``ra``, ``dec``, ``raRate`` and
        ``decRate`` (the tracklet's motion, deg/day, ``raRate`` along the great circle).
    n_matched : int
        DIASources matched to an existing DIAObject.
    """

    dia_object_id: np.ndarray
    dia_objects: Table
    tracklets: Table
    n_matched: int


def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _check_input(sources: Table) -> None:
    missing = [c for c in DIA_ASSOCIATION_INPUT_COLUMNS if c not in sources.colnames]
    if missing:
        raise ValueError(f"sources lacks column(s) {', '.join(missing)}")
    for name in ("ra", "dec", "midpointMjdTai"):
        values = np.asarray(sources[name], dtype=float)
        if not np.isfinite(values).all():
            raise ValueError(f"sources column {name} has {int((~np.isfinite(values)).sum())} "
                             "non-finite value(s)")  # fmt: skip
    ids = np.asarray(sources["diaSourceId"])
    if len(np.unique(ids)) != len(ids):
        raise ValueError("sources diaSourceId values are not unique")


def _position_sigma_arcsec(sources: Table, floor_arcsec: float) -> np.ndarray:
    """One-axis position error per DIASource (arcsec), floored."""
    err = np.hypot(np.asarray(sources["raErr"], float), np.asarray(sources["decErr"], float))
    err = np.where(np.isfinite(err), err / np.sqrt(2.0) * 3600.0, 1.0)
    return np.hypot(err, floor_arcsec)


def dia_object_columns(filters: tuple[str, ...]) -> tuple[str, ...]:
    """Columns of the diaObject table for the given filters, in order."""
    per_filter = (
        "psfFluxNdata",
        "psfFluxMean",
        "psfFluxMeanErr",
        "psfFluxSigma",
        "psfFluxChi2",
    )
    return (
        "diaObjectId",
        "ra",
        "dec",
        "raErr",
        "decErr",
        "nDiaSources",
        "firstDiaSourceMjdTai",
        "lastDiaSourceMjdTai",
        *(f"{band}_{name}" for band in filters for name in per_filter),
    )


def associate_dia_sources(
    sources: Table,
    *,
    filters: tuple[str, ...],
    config: DiaAssociationConfig | None = None,
) -> DiaAssociationResult:
    """Associate DIASources into DIAObjects in visit order; summarize; find tracklets.

    Parameters
    ----------
    sources : astropy.table.Table
        DIASources of one patch with `DIA_ASSOCIATION_INPUT_COLUMNS` (``ra``, ``dec``,
        ``raErr``, ``decErr`` in degrees; ``midpointMjdTai`` in days; ``band`` a filter name).
    filters : tuple of str
        The campaign's filters (the diaObject table has per-filter columns for each).
    config : DiaAssociationConfig, optional
        Radius, chi^2 cut, tracklet rates.

    Returns
    -------
    DiaAssociationResult
        The association (empty tables with all their columns when ``sources`` is empty).

    Raises
    ------
    ValueError
        If a column is missing, a position or epoch is not finite, or ids repeat.
    """
    config = config or DiaAssociationConfig()
    _check_input(sources)
    n = len(sources)
    sigma = _position_sigma_arcsec(sources, config.position_error_floor_arcsec)
    ra = np.asarray(sources["ra"], float)
    dec = np.asarray(sources["dec"], float)
    vectors = _unit_vectors(ra, dec)
    source_ids = np.asarray(sources["diaSourceId"], np.int64)
    visits = np.asarray(sources["visit"], np.int64)
    mjd = np.asarray(sources["midpointMjdTai"], float)
    order = np.lexsort((source_ids, visits, mjd))
    owner = np.full(n, -1, dtype=np.int64)  # object index per source
    obj_vec = np.zeros((0, 3))
    obj_sigma = np.zeros(0)
    obj_weight = np.zeros(0)
    obj_sum = np.zeros((0, 3))
    radius_rad = config.radius_arcsec / _ARCSEC_PER_RAD
    n_matched = 0
    bounds = [0, *(np.flatnonzero(np.diff(visits[order]) != 0) + 1).tolist(), n] if n else [0]
    for start, stop in itertools.pairwise(bounds):
        rows = order[start:stop]
        matched = np.zeros(len(rows), dtype=bool)
        if len(obj_vec):
            tree = cKDTree(obj_vec)
            candidates = tree.query_ball_point(vectors[rows], radius_rad)
            involved = sorted({j for c in candidates for j in c})
            if involved:
                column = {j: k for k, j in enumerate(involved)}
                cost = np.full((len(rows), len(involved)), 1e12)
                for i, cand in enumerate(candidates):
                    for j in cand:
                        d = np.linalg.norm(vectors[rows[i]] - obj_vec[j]) * _ARCSEC_PER_RAD
                        # the radius is the gate, as in ap_association; the chi^2 ranks
                        # (a chi^2 cut split transients whose difference centroids wander
                        # by 0.6" near residuals of the template: measured, workflow test)
                        cost[i, column[j]] = d * d / (sigma[rows[i]] ** 2 + obj_sigma[j] ** 2)
                r, c = linear_sum_assignment(cost)
                for i, k in zip(r, c, strict=True):
                    if cost[i, k] < 1e12:
                        j = involved[k]
                        owner[rows[i]] = j
                        matched[i] = True
        n_matched += int(matched.sum())
        for i in np.flatnonzero(matched):
            j = owner[rows[i]]
            w = 1.0 / sigma[rows[i]] ** 2
            obj_sum[j] += w * vectors[rows[i]]
            obj_weight[j] += w
            obj_vec[j] = obj_sum[j] / np.linalg.norm(obj_sum[j])
            obj_sigma[j] = 1.0 / np.sqrt(obj_weight[j])
        new = rows[~matched]
        if len(new):
            first = len(obj_vec)
            owner[new] = np.arange(first, first + len(new))
            w = 1.0 / sigma[new] ** 2
            obj_vec = np.vstack([obj_vec, vectors[new]])
            obj_sum = np.vstack([obj_sum, w[:, None] * vectors[new]])
            obj_weight = np.concatenate([obj_weight, w])
            obj_sigma = np.concatenate([obj_sigma, sigma[new]])
    first_source = np.full(len(obj_vec), -1, dtype=np.int64)
    for i in order[::-1]:
        first_source[owner[i]] = i
    object_ids = source_ids[first_source] if n else np.zeros(0, np.int64)
    dia_object_id = object_ids[owner] if n else np.zeros(0, np.int64)
    dia_objects = _summaries(sources, owner, object_ids, obj_vec, obj_sigma, filters)
    # A mover in a template visit leaves negative ghosts at that position in every other
    # visit, which associate with its positive DIASource there: only the positive DIASources
    # of a DIAObject count when deciding that it was seen once (a tracklet candidate).
    positive = ~np.asarray(sources["isNegative"], bool)
    counts = np.bincount(owner[positive], minlength=len(obj_vec)) if n else np.zeros(0, int)
    single = positive & (counts[owner] == 1) if n else np.zeros(0, bool)
    tracklets = find_tracklets(sources[single], config=config)
    log.info(
        "%d DIASources: %d matched, %d DIAObjects, %d tracklets",
        n, n_matched, len(dia_objects), len(np.unique(tracklets["trackletId"])),
    )  # fmt: skip
    return DiaAssociationResult(dia_object_id, dia_objects, tracklets, n_matched)


def _summaries(sources, owner, object_ids, obj_vec, obj_sigma, filters) -> Table:
    columns = dia_object_columns(filters)
    n_obj = len(object_ids)
    out = {name: np.full(n_obj, np.nan) for name in columns}
    out["diaObjectId"] = object_ids.astype(np.int64)
    if n_obj:
        out["ra"] = np.degrees(np.arctan2(obj_vec[:, 1], obj_vec[:, 0])) % 360.0
        out["dec"] = np.degrees(np.arcsin(np.clip(obj_vec[:, 2], -1.0, 1.0)))
        out["raErr"] = obj_sigma / 3600.0
        out["decErr"] = obj_sigma / 3600.0
    mjd = np.asarray(sources["midpointMjdTai"], float)
    out["nDiaSources"] = np.bincount(owner, minlength=n_obj).astype(np.int64)
    first = np.full(n_obj, np.inf)
    last = np.full(n_obj, -np.inf)
    np.minimum.at(first, owner, mjd)
    np.maximum.at(last, owner, mjd)
    out["firstDiaSourceMjdTai"] = first
    out["lastDiaSourceMjdTai"] = last
    band = np.asarray(sources["band"]).astype(str)
    flux = np.asarray(sources["psfFlux"], float)
    err = np.asarray(sources["psfFluxErr"], float)
    for b in filters:
        sel = (band == b) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
        o, f, w = owner[sel], flux[sel], 1.0 / err[sel] ** 2
        ndata = np.bincount(o, minlength=n_obj)
        sw = np.bincount(o, w, minlength=n_obj)
        mean = np.bincount(o, w * f, minlength=n_obj) / np.where(sw > 0, sw, 1.0)
        mean_sq = np.bincount(o, f * f, minlength=n_obj) / np.maximum(ndata, 1)
        plain = np.bincount(o, f, minlength=n_obj) / np.maximum(ndata, 1)
        sigma = np.sqrt(np.maximum(mean_sq - plain**2, 0.0) * ndata / np.maximum(ndata - 1, 1))
        chi2 = np.bincount(o, w * (f - mean[o]) ** 2, minlength=n_obj)
        has = ndata > 0
        out[f"{b}_psfFluxNdata"] = ndata.astype(np.int64)
        out[f"{b}_psfFluxMean"] = np.where(has, mean, np.nan)
        out[f"{b}_psfFluxMeanErr"] = np.where(has, 1.0 / np.sqrt(np.where(has, sw, 1.0)), np.nan)
        out[f"{b}_psfFluxSigma"] = np.where(ndata > 1, sigma, np.nan)
        out[f"{b}_psfFluxChi2"] = np.where(has, chi2, np.nan)
    table = Table({name: out[name] for name in columns})
    table.sort("diaObjectId")
    return table


def _empty_tracklets() -> Table:
    return Table(
        {
            "trackletId": np.zeros(0, np.int64),
            "diaSourceId": np.zeros(0, np.int64),
            "midpointMjdTai": np.zeros(0),
            "ra": np.zeros(0),
            "dec": np.zeros(0),
            "raRate": np.zeros(0),
            "decRate": np.zeros(0),
        }
    )


def _pair_cost(flux_chi2: float, rate: float) -> float:
    """-2 ln of a pair's likelihood: flux consistency, and a log-uniform prior on the rate.

    A rate prior uniform in log(rate) puts the second detection at distance d with a density
    per unit area of 1/d^2, hence ``4 ln(rate)``: among flux-consistent partners the nearer
    one is the likelier (measured on tests/test_alert_workflow.py's campaign: 44 of 47
    mover-nights linked with weights 1 to 10 on the log rate, 40 without it).
    """
    return flux_chi2 + 4.0 * np.log(max(rate, 1e-3))


def _assigned_pairs(ranked: list[tuple]) -> list[tuple]:
    """Candidate pairs in the order tracklets are seeded.

    ``ranked`` holds ``(-n_on_line, flux_chi2, rate, i, j)``. Per tier of ``n_on_line``, a
    minimum-total-cost assignment of first to second members comes first, cheapest pair
    first, then the tier's other pairs: a greedy best pair on a crowded night takes one
    member of each of two true pairs (37 of 47 mover-nights greedy, 44 assigned).
    """
    out = []
    for tier in sorted({r[0] for r in ranked}):
        members = [r for r in ranked if r[0] == tier]
        rows = {i: k for k, i in enumerate(sorted({r[3] for r in members}))}
        cols = {j: k for k, j in enumerate(sorted({r[4] for r in members}))}
        cost = np.full((len(rows), len(cols)), np.inf)
        best = {}
        for r in members:
            key = (rows[r[3]], cols[r[4]])
            c = _pair_cost(r[1], r[2])
            if c < cost[key]:
                cost[key] = c
                best[key] = r
        # inf is not allowed by the solver: a cost above every real one stands for "no pair"
        finite = np.isfinite(cost)
        cost[~finite] = cost[finite].max() + 1e6
        a, b = linear_sum_assignment(cost)
        chosen = sorted(
            (best[x, y] for x, y in zip(a.tolist(), b.tolist(), strict=True) if finite[x, y]),
            key=lambda r: _pair_cost(r[1], r[2]),
        )
        out.extend(chosen)
        out.extend(sorted(set(members) - set(chosen)))
    return out


def find_tracklets(sources: Table, *, config: DiaAssociationConfig | None = None) -> Table:
    """Tracklets: DIASources of one night consistent with one linear motion.

    Parameters
    ----------
    sources : astropy.table.Table
        Candidate DIASources (`DIA_ASSOCIATION_INPUT_COLUMNS`): positive, not part of a
        DIAObject seen twice.
    config : DiaAssociationConfig, optional
        Rates, night length and tolerance.

    Returns
    -------
    astropy.table.Table
        As `DiaAssociationResult.tracklets`; each DIASource belongs to at most one tracklet
        (pairs are taken shortest first).
    """
    config = config or DiaAssociationConfig()
    n = len(sources)
    if n < 2:
        return _empty_tracklets()
    ra0 = float(np.median(sources["ra"]))
    dec0 = float(np.median(sources["dec"]))
    cos0 = np.cos(np.radians(dec0))
    # local tangent-plane offsets (arcsec): a patch is far smaller than a radian
    x = ((np.asarray(sources["ra"], float) - ra0 + 180.0) % 360.0 - 180.0) * cos0 * 3600.0
    y = (np.asarray(sources["dec"], float) - dec0) * 3600.0
    t = np.asarray(sources["midpointMjdTai"], float) * 24.0  # hours
    visit = np.asarray(sources["visit"], np.int64)
    ids = np.asarray(sources["diaSourceId"], np.int64)
    flux = np.asarray(sources["psfFlux"], float)
    flux_err = np.asarray(sources["psfFluxErr"], float)
    max_rate = config.tracklet_max_rate_deg_per_day * 3600.0 / 24.0  # arcsec/hour
    # candidate pairs per pair of visits, within the distance the fastest mover covers between
    # them (one k-d tree per visit; a search over the whole night's reach was quadratic)
    visit_ids = np.unique(visit)
    members = {v: np.flatnonzero(visit == v) for v in visit_ids.tolist()}
    trees = {v: cKDTree(np.column_stack([x[m], y[m]])) for v, m in members.items()}
    start = {v: float(t[m[0]]) for v, m in members.items()}
    pairs = []
    for a in visit_ids.tolist():
        for b in visit_ids.tolist():
            dt = start[b] - start[a]
            if dt <= 0 or dt > config.tracklet_max_gap_hours:
                continue
            found = trees[a].query_ball_tree(trees[b], max_rate * dt)
            for k, near in enumerate(found):
                i = members[a][k]
                for j in members[b][near].tolist():
                    rate = np.hypot(x[j] - x[i], y[j] - y[i]) / (t[j] - t[i])
                    if not config.tracklet_min_rate_arcsec_per_hour <= rate <= max_rate:
                        continue
                    flux_chi2 = (flux[j] - flux[i]) ** 2 / (flux_err[i] ** 2 + flux_err[j] ** 2)
                    if flux_chi2 <= config.tracklet_max_flux_chi2:
                        pairs.append((flux_chi2, rate, i, j))
    used = np.zeros(n, dtype=bool)
    rows = []
    # Pairs that more DIASources of the night continue along a line come first; within a tier
    # a minimum-cost assignment on flux consistency (an asteroid's brightness barely changes
    # within a night) and the rate prior decides (`_assigned_pairs`).
    ranked = []
    for flux_chi2, rate, i, j in pairs:
        vx = (x[j] - x[i]) / (t[j] - t[i])
        vy = (y[j] - y[i]) / (t[j] - t[i])
        near = np.abs(t - t[i]) <= config.tracklet_max_gap_hours
        miss = np.hypot(x - x[i] - vx * (t - t[i]), y - y[i] - vy * (t - t[i]))
        n_on_line = int(np.unique(visit[near & (miss <= config.tracklet_tolerance_arcsec)]).size)
        ranked.append((-n_on_line, flux_chi2, rate, i, j))
    for _, _, _, i, j in _assigned_pairs(ranked):
        if used[i] or used[j]:
            continue
        vx = (x[j] - x[i]) / (t[j] - t[i])
        vy = (y[j] - y[i]) / (t[j] - t[i])
        near = np.abs(t - t[i]) <= config.tracklet_max_gap_hours
        predicted_x = x[i] + vx * (t - t[i])
        predicted_y = y[i] + vy * (t - t[i])
        fits = near & ~used & (np.hypot(x - predicted_x, y - predicted_y)
                               <= config.tracklet_tolerance_arcsec)  # fmt: skip
        fits[[i, j]] = True
        members = np.flatnonzero(fits)
        # one DIASource per visit: the one nearest the prediction
        keep = []
        for v in np.unique(visit[members]):
            in_visit = members[visit[members] == v]
            miss = np.hypot(
                x[in_visit] - predicted_x[in_visit], y[in_visit] - predicted_y[in_visit]
            )
            keep.append(int(in_visit[np.argmin(miss)]))
        keep = np.array(sorted(keep, key=lambda k: t[k]))
        if len(keep) < 2:
            continue
        used[keep] = True
        coef_x = np.polyfit(t[keep] - t[keep[0]], x[keep], 1)[0]
        coef_y = np.polyfit(t[keep] - t[keep[0]], y[keep], 1)[0]
        tracklet_id = int(ids[keep].min())
        for k in keep:
            rows.append((tracklet_id, ids[k], t[k] / 24.0, float(sources["ra"][k]),
                         float(sources["dec"][k]), coef_x * 24.0 / 3600.0,
                         coef_y * 24.0 / 3600.0))  # fmt: skip
    if not rows:
        return _empty_tracklets()
    table = Table(rows=rows, names=_empty_tracklets().colnames)
    table["trackletId"] = table["trackletId"].astype(np.int64)
    table["diaSourceId"] = table["diaSourceId"].astype(np.int64)
    return table
