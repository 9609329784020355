"""Do the Fe55 gain errors cover the truth at their stated level? Measured over many seeds.

Run: nice -n 5 .venv/bin/python benchmarks/fe55_coverage.py [n_seeds]   (default 100)

Simulates the hard sensor of tests/test_fe55_hard.py (2 x 2 mirrored taps, half the X-rays
diffuse with part of their charge lost, deferred charge, dead rows, hot pixels, cosmic rays)
once per seed and measures every amplifier with the default configuration. Prints, over all
amplifiers, the share of pulls ``(gain - truth) / error`` within 1 and 2 (a Gaussian gives
68.3 % and 95.4 %; the binomial standard error is printed beside each), the rms and mean pull,
and the same figures for the peak's Fisher error alone (without the bias error and the
bootstrap spread), so that the part each term of the error plays shows side by side. Last,
the pulls' spread per amplifier position, which tells a per-tap systematic from scatter.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from dcflow.instruments.fe55_sim import HARD_SENSOR, simulate_fe55_exposure
from dcflow.stages.fe55 import measure_fe55_gain


def coverage_line(label: str, pulls: np.ndarray) -> str:
    """Coverage at 1 and 2 sigma with binomial errors, rms and mean of ``pulls``."""
    n = pulls.size
    cells = []
    for k, gaussian in ((1, 0.6827), (2, 0.9545)):
        share = float(np.mean(np.abs(pulls) < k))
        binomial = np.sqrt(gaussian * (1 - gaussian) / n)
        cells.append(f"{100 * share:5.1f} % (Gauss {100 * gaussian:.1f} +- {100 * binomial:.1f})")
    rms, mean = np.sqrt(np.mean(pulls**2)), np.mean(pulls)
    return f"{label:<28} {cells[0]:>30} {cells[1]:>30} {rms:6.3f} {mean:+6.3f}"


def main(n_seeds: int) -> None:
    """Print the coverage table."""
    start = time.process_time()
    rows = []
    for seed in range(n_seeds):
        sim = simulate_fe55_exposure(dataclasses.replace(HARD_SENSOR, seed=seed), ccd=0, exposure=0)
        table = measure_fe55_gain(sim.raw, sim.layout).table()
        truth = np.asarray(sim.truth["gain_e_per_adu"])
        gain = np.asarray(table["gain_e_per_adu"])
        true_peak = np.asarray(table["kalpha_yield_e"]) / truth
        rows.append(
            (
                (gain - truth) / np.asarray(table["gain_err_e_per_adu"]),
                (np.asarray(table["peak_adu"]) - true_peak) / np.asarray(table["peak_fit_err_adu"]),
                gain / truth - 1,
                np.asarray(table["trusted"]),
                np.asarray(table["peak_resampled_err_adu"]) > 0,
            )
        )
    columns = (np.array(c) for c in zip(*rows, strict=True))
    pulls, fisher_pulls, deviation, trusted, resampled = columns
    n_amps = pulls.size
    print(
        f"{n_seeds} seeds x {pulls.shape[1]} amplifiers = {n_amps}; "
        f"{time.process_time() - start:.0f} s CPU; trusted {int(trusted.sum())}, "
        f"bootstrapped {int(resampled.sum())}"
    )
    print(f"{'':<28} {'within 1 sigma':>30} {'within 2 sigma':>30} {'rms':>6} {'mean':>6}")
    print(coverage_line("stated gain error", pulls.ravel()))
    print(coverage_line("peak Fisher error alone", fisher_pulls.ravel()))
    print(
        f"gain - truth: max |dev| {100 * np.max(np.abs(deviation)):.3f} %, "
        f"rms {100 * np.sqrt(np.mean(deviation**2)):.3f} %, mean {100 * np.mean(deviation):+.3f} %"
    )
    print("per amplifier position: pull mean, rms")
    for j in range(pulls.shape[1]):
        print(f"  amp {j}: {np.mean(pulls[:, j]):+6.3f} {np.sqrt(np.mean(pulls[:, j] ** 2)):6.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
