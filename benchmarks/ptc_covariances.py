"""Photon-transfer gain from variance alone and with neighbour covariances, side by side.

Run: nice -n 5 .venv/bin/python benchmarks/ptc_covariances.py [n_seeds] [esis1 data directory]
(defaults 10 and ../shared/data/fe55-esis1 relative to the repository; 0 seeds: ESIS1 only).

1. The real ESIS1 LED pair (one level) and its dark pair: per tap both photon-transfer gains
   against msfc-ccd's reference, the neighbour covariances' share of the variance with its
   error, and the Fe55 gain (msfc-ccd's yield, 1602.3 e-) over each, with the Fe55 verdict;
   then the covariances' share for a reach of 1, 2 and 3 pixels.
2. The simulator's flat pairs at four levels (5k-80k e-) on the hard sensor's 2 x 2 layout,
   with serial deferred charge of 0, 0.2 % and 1 % (a trail of one pixel: it moves charge to
   the next pixel read, so the variance alone falls by about twice the fraction while the
   charge is kept): per deferred-charge fraction, over seeds x 4 amplifiers, the mean and rms
   deviation of each gain from the truth, the mean stated error and the rms pull.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from dcflow.instruments.fe55_sim import Fe55SimConfig, amp_gains, simulate_flat_pairs
from dcflow.stages.fe55 import Fe55Config, measure_fe55_gain
from dcflow.stages.photon_transfer import PhotonTransferConfig, measure_photon_transfer
from dcflow.stages.sensor_layout import esis1

PTC_REFERENCE = {"00": 2.529, "10": 2.508, "01": 2.530, "11": 2.512}
PLAIN = PhotonTransferConfig()
WITH_COVARIANCES = PhotonTransferConfig(pixel_covariances=True)
LEVELS_E = (5000.0, 20000.0, 40000.0, 80000.0)
DEFERRED = (0.0, 0.002, 0.01)


def real(data: Path) -> None:
    """Print the ESIS1 table."""
    layout = esis1().detector_layout()
    led = [fits.getdata(data / "led" / f"ESIS1_0{n}.fit.gz") for n in (4803, 4804, 4860, 4861)]
    pairs, darks = [(led[0], led[1])], (led[2], led[3])
    plain = measure_photon_transfer(pairs, darks, layout, config=PLAIN).amps
    cov = measure_photon_transfer(pairs, darks, layout, config=WITH_COVARIANCES).amps
    reach = {
        r: measure_photon_transfer(
            pairs, darks, layout, config=PhotonTransferConfig(covariance_reach_pix=r)
        ).amps
        for r in (1, 3)
    }
    raw = fits.getdata(data / "ESIS1_00002.fit.gz")
    fe55 = measure_fe55_gain(raw, layout, config=Fe55Config(kalpha_yield_e=1602.3)).amps
    print("ESIS1 LED pair, one level: plain (variance) and with covariances (reach 2 pixels)")
    print(
        f"{'tap':>3} {'level':>6} {'plain':>15} {'/ref':>6} {'covariances':>15} {'/ref':>6} "
        f"{'cov share':>14} {'Fe55/plain':>10} {'Fe55/cov':>8}  Fe55 verdict"
    )
    for p, c, f in zip(plain, cov, fe55, strict=True):
        ref = PTC_REFERENCE[p.amp]
        print(
            f"{p.amp:>3} {p.signal_adu[0]:6.0f} "
            f"{p.gain_e_per_adu:7.4f} +- {p.gain_err_e_per_adu:.4f} {p.gain_e_per_adu / ref:6.4f} "
            f"{c.gain_e_per_adu:7.4f} +- {c.gain_err_e_per_adu:.4f} {c.gain_e_per_adu / ref:6.4f} "
            f"{100 * p.covariance_fraction[0]:+5.2f} +- {100 * p.covariance_fraction_err[0]:.2f} % "
            f"{f.gain_e_per_adu / p.gain_e_per_adu:10.4f} "
            f"{f.gain_e_per_adu / c.gain_e_per_adu:8.4f}"
            f"  {f.verdict}"
        )
    print("covariance share by reach (pixels): a short-range charge sharing stops growing")
    for p, one, three in zip(plain, reach[1], reach[3], strict=True):
        shares = [a.covariance_fraction[0] for a in (one, p, three)]
        errors = [a.covariance_fraction_err[0] for a in (one, p, three)]
        cells = "  ".join(
            f"reach {r}: {100 * v:+5.2f} +- {100 * e:.2f} %"
            for r, v, e in zip((1, 2, 3), shares, errors, strict=True)
        )
        print(f"{p.amp:>3} {cells}")


def simulated(n_seeds: int) -> None:
    """Print the simulator table."""
    layout = Fe55SimConfig(amp_rows=2, n_amps=2, amp_nx=512, ny=1024).layout()
    print(
        f"\nsimulator: {len(layout.amps)} amplifiers of 512 x 1024, levels "
        f"{', '.join(f'{level:.0f}' for level in LEVELS_E)} e-, {n_seeds} seeds"
    )
    print(
        f"{'deferred':>8} {'method':>12} {'mean dev':>9} {'rms dev':>8} {'mean err':>8} "
        f"{'rms pull':>8} {'cov share':>9}"
    )
    for deferred in DEFERRED:
        rows = {"plain": [], "covariances": []}
        shares = []
        for seed in range(n_seeds):
            gains = amp_gains(
                len(layout.amps), gain_e_per_adu=1.6, gain_spread=0.1, seed=seed, ccd=0
            )
            pairs, biases = simulate_flat_pairs(
                layout, gains, levels_e=LEVELS_E, deferred_charge=deferred, seed=seed
            )
            for name, config in (("plain", PLAIN), ("covariances", WITH_COVARIANCES)):
                table = measure_photon_transfer(pairs, biases, layout, config=config).table()
                gain = np.asarray(table["gain_e_per_adu"])
                error = np.asarray(table["gain_err_e_per_adu"])
                rows[name].append(
                    np.array([gain / gains - 1, error / gain, (gain - gains) / error])
                )
            shares.append(np.asarray(table["covariance_fraction"]))
        for name, values in rows.items():
            dev, rel_err, pull = np.concatenate(values, axis=1)
            print(
                f"{100 * deferred:7.1f}% {name:>12} {100 * dev.mean():+8.3f}% "
                f"{100 * np.sqrt(np.mean(dev**2)):7.3f}% {100 * rel_err.mean():7.3f}% "
                f"{np.sqrt(np.mean(pull**2)):8.2f} {100 * np.mean(shares):+8.2f}%"
            )


if __name__ == "__main__":
    start = time.process_time()
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fe55-esis1"
    real(Path(sys.argv[2]) if len(sys.argv) > 2 else default)
    if seeds:
        simulated(seeds)
    print(f"\n{time.process_time() - start:.0f} s CPU")
