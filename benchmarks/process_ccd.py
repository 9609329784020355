"""Seconds and peak memory of processCcd (and ISR + processCcd) on one full-size CCD.

Usage: .venv/bin/python benchmarks/process_ccd.py [--n-stars N] [--repeat R]

Part 1 times `dcflow.stages.process_ccd.process_ccd` on a synthetic 2048 x 4612 frame from
tests/synthetic.py. Part 2, when src/dcflow/instruments/cfht_sim.py and
src/dcflow/stages/isr.py are importable, times ISR + processCcd on a simulated full-size raw.
Each measurement runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own.
Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD_SYNTHETIC = r"""
import json, resource, sys, time
sys.path.insert(0, {tests!r})
import numpy as np
from synthetic import make_star_field
from dcflow.stages.process_ccd import process_ccd

field = make_star_field((4612, 2048), n_stars={n_stars}, seed=3, mag_range=(16.5, 25.0),
                        fwhm_arcsec=0.8, saturation_e=9.0e4, n_cosmic_rays=300)
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range({repeat}):
    t0 = time.perf_counter()
    result = process_ccd(field.exposure, field.refcat, band="r")
    times.append(time.perf_counter() - t0)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": times, "peak_rss_mb": rss / 1024, "rss_before_mb": rss_before / 1024,
                  "n_src": len(result.src), "n_astrom": result.n_astrom_matched,
                  "astrom_rms_mas": result.astrom_rms_mas, "zp": result.zero_point,
                  "psf_fwhm_arcsec": result.psf_fwhm_arcsec}}))
"""


def run_child(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stars", type=int, default=2500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    code = CHILD_SYNTHETIC.format(
        tests=str(ROOT / "tests"), n_stars=args.n_stars, repeat=args.repeat
    )
    res = run_child(code)
    if "error" in res:
        print(f"process_ccd (synthetic 2048x4612): failed: {res['error']}")
    else:
        best = min(res["seconds"])
        print(
            f"process_ccd (synthetic 2048x4612, {res['n_src']} sources, "
            f"{res['n_astrom']} astrometric matches): best {best:.2f} s of "
            f"{', '.join(f'{t:.2f}' for t in res['seconds'])}; "
            f"peak RSS {res['peak_rss_mb']:.0f} MB (field alone {res['rss_before_mb']:.0f} MB); "
            f"astrom rms {res['astrom_rms_mas']:.1f} mas, "
            f"PSF FWHM {res['psf_fwhm_arcsec']:.3f} arcsec"
        )


if __name__ == "__main__":
    main()
