"""Seconds of DIAObject association and tracklets for one patch, against the number of visits.

Usage: .venv/bin/python benchmarks/dia_association.py [--per-visit N] [--visits V ...]

Each visit adds N DIASources over a 0.2 x 0.2 deg patch: two thirds at the positions of a
fixed set of static sources (0.1" noise), one third new (transients, movers, bogus). Prints
wall and CPU seconds of `dcflow.stages.dia_association.associate_dia_sources` (k-d tree per
visit, minimum-cost assignment, summaries and tracklets) and the DIAObject count per visit
count, side by side. Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from astropy.table import Table

from dcflow.stages.dia_association import associate_dia_sources


def make_sources(n_visits: int, per_visit: int, seed: int = 1) -> Table:
    """DIASources of ``n_visits`` visits (4 a night, 30 minutes apart)."""
    rng = np.random.default_rng(seed)
    n_static = 2 * per_visit
    ra_s = 150.0 + rng.uniform(-0.1, 0.1, n_static)
    dec_s = 2.2 + rng.uniform(-0.1, 0.1, n_static)
    columns = {k: [] for k in ("visit", "midpointMjdTai", "ra", "dec")}
    for v in range(n_visits):
        pick = rng.choice(n_static, 2 * per_visit // 3, replace=False)
        new = per_visit - len(pick)
        ra = np.concatenate([ra_s[pick], 150.0 + rng.uniform(-0.1, 0.1, new)])
        dec = np.concatenate([dec_s[pick], 2.2 + rng.uniform(-0.1, 0.1, new)])
        columns["visit"].append(np.full(per_visit, 1000 + v))
        columns["midpointMjdTai"].append(np.full(per_visit, 60000.0 + v // 4 + (v % 4) / 48.0))
        columns["ra"].append(ra + rng.normal(0, 0.1 / 3600, per_visit))
        columns["dec"].append(dec + rng.normal(0, 0.1 / 3600, per_visit))
    table = Table({k: np.concatenate(v) for k, v in columns.items()})
    n = len(table)
    table["band"] = np.full(n, "r")
    table["raErr"] = np.full(n, 0.1 / 3600)
    table["decErr"] = np.full(n, 0.1 / 3600)
    table["psfFlux"] = rng.normal(1000.0, 50.0, n)
    table["psfFluxErr"] = np.full(n, 50.0)
    table["isNegative"] = np.zeros(n, bool)
    table["diaSourceId"] = np.arange(1, n + 1, dtype=np.int64)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-visit", type=int, default=500)
    parser.add_argument("--visits", type=int, nargs="+", default=[10, 40, 160])
    args = parser.parse_args()
    print(f"{'visits':>7} {'DIASources':>11} {'DIAObjects':>11} {'wall s':>8} {'CPU s':>8}")
    for n_visits in args.visits:
        table = make_sources(n_visits, args.per_visit)
        wall, cpu = time.perf_counter(), time.process_time()
        result = associate_dia_sources(table, filters=("r",))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"{n_visits:>7} {len(table):>11} {len(result.dia_objects):>11} {wall:>8.2f} {cpu:>8.2f}"
        )


if __name__ == "__main__":
    main()
