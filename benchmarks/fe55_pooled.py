"""Fe55 gain of a sensor: one fit over all its exposures' events vs the mean of per-exposure fits.

Run: nice -n 10 .venv/bin/python benchmarks/fe55_pooled.py [n_seeds] [events_per_amp]
(defaults 10 and 700)

Simulates, per seed, 4 exposures of a 2 x 8 tap version of the hard sensor of
tests/test_fe55_hard.py (512 x 512 pixel taps, half the X-rays diffuse with part of their
charge lost, deferred charge, dead rows, hot pixels, cosmic rays); ``events_per_amp`` X-rays
per tap per exposure leave 150-300 graded K-alpha events per tap at 500-1000 (the isolation
cut takes more of them the denser the frame). Each exposure is measured with the default
configuration, then the sensor is summarized twice: the inverse-variance weighted mean of the
per-exposure gains (`summarize_gains` alone, as before pooling) and the pooled fit
(`pool_exposures`, the fe55_summary job's gain). Prints, over every tap of every seed and
side by side, the gain's deviation from truth (mean: the bias; rms; largest), the pulls
(deviation over stated error: rms and mean), the taps trusted and those within 1 % and 0.5 %
of truth; then the per-exposure chi2/dof about the mean, whose size says whether the pooled
fit needs a per-exposure offset term.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from dcflow.instruments.fe55_sim import HARD_SENSOR, simulate_fe55_exposure
from dcflow.stages.fe55 import measure_fe55_gain, pool_exposures, summarize_gains

N_EXPOSURES = 4


def sensor(seed: int, events_per_amp: int):
    """Per-exposure gain tables, the two summaries and the true gains of one simulated sensor."""
    config = dataclasses.replace(
        HARD_SENSOR, n_amps=8, prescan_cols=20, events_per_amp=events_per_amp, seed=seed
    )
    results = []
    for exposure in range(N_EXPOSURES):
        sim = simulate_fe55_exposure(config, ccd=0, exposure=exposure)
        results.append(measure_fe55_gain(sim.raw, sim.layout))
    tables = [r.table() for r in results]
    pooled = pool_exposures(tables, [r.events_table() for r in results]).table()
    mean = summarize_gains(tables, truth=sim.truth)
    pool = summarize_gains(tables, pooled=pooled, truth=sim.truth)
    return tables, mean, pool, np.asarray(sim.truth["gain_e_per_adu"])


def line(label: str, summaries, truths) -> str:
    """Deviation, pull and trust figures of one method over every tap of every seed."""
    gain = np.concatenate([np.asarray(s["gain_e_per_adu"]) for s in summaries])
    error = np.concatenate([np.asarray(s["gain_err_e_per_adu"]) for s in summaries])
    trusted = np.concatenate([np.asarray(s["trusted"]) for s in summaries])
    truth = np.concatenate(truths)
    dev = gain / truth - 1
    pull = (gain - truth) / error
    return (
        f"{label:<14} {100 * np.mean(dev):+7.3f} {100 * np.sqrt(np.mean(dev**2)):7.3f} "
        f"{100 * np.max(np.abs(dev)):7.3f} {np.sqrt(np.mean(pull**2)):6.2f} {np.mean(pull):+6.2f} "
        f"{int(trusted.sum()):4d}/{trusted.size} {int(np.sum(np.abs(dev) < 0.01)):4d} "
        f"{int(np.sum(np.abs(dev) < 0.005)):4d}"
    )


def main(n_seeds: int, events_per_amp: int) -> None:
    """Simulate and measure the seeds on two processes, then print the table."""
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(sensor, range(n_seeds), [events_per_amp] * n_seeds))
    print(f"{time.perf_counter() - start:.0f} s wall on 2 processes")
    report(runs, events_per_amp)


def report(runs, events_per_amp: int) -> None:
    """Print the side-by-side table of `sensor` results."""
    n_seeds = len(runs)
    n_kalpha = np.array([np.asarray(t["n_kalpha"]) for tables, *_ in runs for t in tables])
    print(
        f"{n_seeds} seeds x 16 taps x {N_EXPOSURES} exposures, {events_per_amp} X-rays per tap: "
        f"K-alpha events per tap and exposure median {np.median(n_kalpha):.0f} "
        f"(5-95 %: {np.percentile(n_kalpha, 5):.0f}-{np.percentile(n_kalpha, 95):.0f})"
    )
    print(
        f"{'gain from':<14} {'bias %':>7} {'rms %':>7} {'max %':>7} {'pull':>6} {'mean':>6} "
        f"{'trusted':>9} {'<1%':>4} {'<.5%':>4}"
    )
    truths = [truth for *_, truth in runs]
    print(line("exposure mean", [mean for _, mean, _, _ in runs], truths))
    print(line("pooled fit", [pool for _, _, pool, _ in runs], truths))
    single = [t for tables, *_ in runs for t in tables]
    print(line("one exposure", single, [truth for *_, truth in runs for _ in range(N_EXPOSURES)]))
    chi2 = np.concatenate([np.asarray(pool["chi2_per_dof"]) for _, _, pool, _ in runs])
    combined = np.concatenate([np.asarray(pool["n_combined"]) for _, _, pool, _ in runs])
    print(
        f"per-exposure gains about their mean: chi2/dof mean {np.mean(chi2[combined > 1]):.2f}, "
        f"median {np.median(chi2[combined > 1]):.2f} over {int(np.sum(combined > 1))} taps; "
        f"exposures combined per tap: mean {np.mean(combined):.2f}"
    )
    verdicts = [v for _, _, pool, _ in runs for v in pool["verdict"] if v != "ok"]
    mean_verdicts = [v for _, mean, _, _ in runs for v in mean["verdict"] if v != "ok"]
    print("untrusted, pooled:", sorted(set(verdicts))[:6])
    print("untrusted, exposure mean:", sorted(set(mean_verdicts))[:6])


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 10,
        int(sys.argv[2]) if len(sys.argv) > 2 else 700,
    )
