"""Fe55 and photon-transfer gains of the real ESIS1 frames, side by side with the references.

Run: .venv/bin/python benchmarks/fe55_real.py [data directory] [summary picture .png]
(default ../shared/data/fe55-esis1 relative to the repository; with a picture path, the sensor
summary picture of the frame against the LED pair is written there, as the fe55_summary job
draws it: docs/fe55_summary_esis1.png). Prints per tap the Fe55 gain
(K-alpha yield 1602.3 e-, msfc-ccd's), its verdict, the photon-transfer gain, msfc-ccd's
references and the ratios; "width" is the freed line width over the expected one, "lost" the
share of bootstrap resamples that lost the peak.

Then the charge-collection check behind the grades fitted: per tap the Fe55/PTC ratio of the
compact grades (0, 2, 3, 4, 6: the default), of the diffuse grade-7 events alone and of all
grades, from the same 5x5 sums. Diffuse events that kept their whole charge would give the
compact events' gain; on taps 00, 10 and 01 their gain comes out 2.5-7.8 % higher (their
K-alpha signal that much lower), so they are left out, and mixing them in smears the line
(tap 10 loses it). A 7x7 sum, measured outside this script, leaves their line 2.7-7.9 %
below the compact events' 7x7 line as well (taps 00, 10, 01; 9x9 sums are too noisy to
tell, errors 2-3 %): the charge is lost in the silicon, not spread beyond the 5x5 box. The
mean profile of compact K-alpha events, 3-8 pixels from the peak along rows and columns, is
zero within its noise (1.5-2.5 ADU per 5-pixel band, 0.2-0.4 % of the line): no serial or
parallel trail leaves the box. The stage measures that trail itself on the fitted events
(`charge_trail`: trailing band minus leading band, 3-7 pixels beyond the box, over the peak),
printed per tap: on ESIS1 all within 2.5 standard errors of zero (0.5-0.8 % errors).

Last, what the photon-transfer gain leaves out: the covariances of neighbouring pixels in the
flat-pair difference (brighter-fatter, deferred charge). Variance alone misses them, so a
PTC gain of ``mean / variance`` is high by their sum (``cov_sum``, nearest and next-nearest
neighbours over the variance; statistical error about 0.5 %), and ``Fe55/PTCcov`` sets the
Fe55 gain against ``mean / (variance + covariances)``. The LED level differs per tap.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clip

from dcflow.plots import fe55_summary_figure
from dcflow.stages.fe55 import Fe55Config, measure_fe55_gain, subtract_bias, summarize_gains
from dcflow.stages.photon_transfer import measure_photon_transfer
from dcflow.stages.sensor_layout import esis1

PTC_REFERENCE = {"00": 2.529, "10": 2.508, "01": 2.530, "11": 2.512}
FE55_REFERENCE = {"00": 2.555, "10": 2.503, "01": 2.462, "11": float("nan")}


def main(data: Path, picture: Path | None = None) -> None:
    """Print the table; draw the sensor summary picture when ``picture`` is given."""
    layout = esis1().detector_layout()
    raw = fits.getdata(data / "ESIS1_00002.fit.gz")
    led = [fits.getdata(data / "led" / f"ESIS1_0{n}.fit.gz") for n in (4803, 4804, 4860, 4861)]
    fe55 = measure_fe55_gain(raw, layout, config=Fe55Config(kalpha_yield_e=1602.3))
    ptc_result = measure_photon_transfer([(led[0], led[1])], (led[2], led[3]), layout)
    ptc = {a.amp: a for a in ptc_result.amps}
    if picture is not None:
        summary = summarize_gains([fe55.table()], ptc=ptc_result.table())
        figure = fe55_summary_figure(summary, title="ESIS1 Fe55 frame 00002 vs LED pair")
        figure.savefig(picture, format="png", dpi=90)
    print(
        f"{'tap':>3} {'Fe55':>7} {'err':>6} {'PTC':>7} {'PTCref':>6} {'PTC/ref':>7} "
        f"{'Fe55/PTC':>8} {'msfc Fe55':>9} {'width':>5} {'nKa':>4} {'lost':>4}  verdict"
    )
    for amp in fe55.amps:
        p = ptc[amp.amp]
        print(
            f"{amp.amp:>3} {amp.gain_e_per_adu:7.4f} {amp.gain_err_e_per_adu:6.4f} "
            f"{p.gain_e_per_adu:7.4f} {PTC_REFERENCE[amp.amp]:6.3f} "
            f"{p.gain_e_per_adu / PTC_REFERENCE[amp.amp]:7.4f} "
            f"{amp.gain_e_per_adu / p.gain_e_per_adu:8.4f} {FE55_REFERENCE[amp.amp]:9.3f} "
            f"{amp.width_ratio:5.2f} {amp.fit.n_kalpha if amp.fit else 0:4.0f} "
            f"{amp.unstable_fraction:4.2f}  "
            + ("trusted" if amp.trusted else f"UNTRUSTED: {amp.verdict}")
        )
    print("\ncharge collection by grade (Fe55/PTC +- error, K-alpha events; no bootstrap)")
    print(f"{'tap':>3} {'compact 0,2,3,4,6':>22} {'diffuse 7':>22} {'all grades':>22}")
    by_grades = [
        measure_fe55_gain(
            raw, layout, config=Fe55Config(kalpha_yield_e=1602.3, grades=grades, resamples=0)
        ).amps
        for grades in ((0, 2, 3, 4, 6), (7,), tuple(range(8)))
    ]
    for amps in zip(*by_grades, strict=True):
        p = ptc[amps[0].amp]
        cells = [
            f"{a.gain_e_per_adu / p.gain_e_per_adu:6.4f} +- "
            f"{a.gain_err_e_per_adu / p.gain_e_per_adu:6.4f} {a.fit.n_kalpha if a.fit else 0:4.0f}"
            for a in amps
        ]
        print(f"{amps[0].amp:>3} " + " ".join(f"{c:>22}" for c in cells))
    print("\none-sided charge beyond the 5x5 box of the fitted K-alpha events (% of the peak)")
    print(f"{'tap':>3} {'along x':>16} {'along y':>16}")
    for amp in fe55.amps:
        print(
            f"{amp.amp:>3} {100 * amp.trail_fraction_x:+6.2f} +- {100 * amp.trail_err_x:4.2f} "
            f"{100 * amp.trail_fraction_y:+6.2f} +- {100 * amp.trail_err_y:4.2f}"
        )
    print("\npixel covariances of the LED pair difference (fractions of its variance)")
    print(f"{'tap':>3} {'level':>6} {'cov x':>7} {'cov y':>7} {'cov_sum':>7} {'Fe55/PTCcov':>11}")
    for amp in fe55.amps:
        geometry = next(a for a in layout.amps if a.name == amp.amp)
        level, covs = _difference_covariances(led[0], led[1], geometry)
        cov_sum = 2 * sum(covs.values())
        ratio = amp.gain_e_per_adu / ptc[amp.amp].gain_e_per_adu * (1 + cov_sum)
        print(
            f"{amp.amp:>3} {level:6.0f} {covs[(0, 1)]:+7.4f} {covs[(1, 0)]:+7.4f} "
            f"{cov_sum:+7.4f} {ratio:11.4f}"
        )


def _difference_covariances(flat1, flat2, amp):
    """Mean level (ADU) and neighbour covariances over the variance of a flat pair's difference.

    Covariances at offsets (dy, dx) = (0, 1), (1, 0), (0, 2), (2, 0), (1, 1), (1, -1), each
    standing for itself and its mirror (-dy, -dx) in the sum over neighbours; pixels 5 sigma
    out of the difference are set to zero.
    """
    a = subtract_bias(flat1, amp, region="prescan").image_adu
    b = subtract_bias(flat2, amp, region="prescan").image_adu
    diff = (a - b * (a.mean() / b.mean()))[5:-5, 5:-5]
    diff = diff - np.median(diff)
    clipped = sigma_clip(diff, sigma=5.0).mask
    diff = np.where(clipped, 0.0, diff)
    variance = float(np.mean(diff[~clipped] ** 2))
    ny, nx = diff.shape
    covs = {}
    for dy, dx in ((0, 1), (1, 0), (0, 2), (2, 0), (1, 1), (1, -1)):
        x0, x1 = max(0, -dx), nx - max(0, dx)
        covs[(dy, dx)] = float(np.mean(diff[: ny - dy, x0:x1] * diff[dy:, x0 + dx : x1 + dx]))
        covs[(dy, dx)] /= variance
    return 0.5 * (a.mean() + b.mean()), covs


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fe55-esis1"
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else default,
        Path(sys.argv[2]) if len(sys.argv) > 2 else None,
    )
