"""Seconds and peak memory of processCcd (and ISR + processCcd) on one full-size CCD.

Usage: .venv/bin/python benchmarks/process_ccd.py [--n-stars N] [--repeat R]
       [--psf-flux-width model local]

Part 1 times `dcflow.stages.process_ccd.process_ccd` on a synthetic 2048 x 4612 frame from
tests/synthetic.py, once per PSF-width mode (``psf_flux_width``: the model's width, or each
source's own width weighed against it). Part 2, when src/dcflow/instruments/cfht_sim.py and
src/dcflow/stages/isr.py are importable, times ISR + processCcd on a simulated full-size raw.
Each measurement runs in a fresh subprocess, with BLAS / OpenMP limited to one thread, so
that its peak RSS (ru_maxrss) is its own; wall and CPU seconds are both printed because the
shared machine is often loaded (CPU seconds are then the fairer single-core figure).
Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD_SYNTHETIC = r"""
import json, resource, sys, time
sys.path.insert(0, {tests!r})
import numpy as np
from synthetic import make_star_field
from dcflow.stages.process_ccd import ProcessCcdConfig, process_ccd

config = ProcessCcdConfig(psf_flux_width={psf_flux_width!r})
field = make_star_field((4612, 2048), n_stars={n_stars}, seed=3, mag_range=(16.0, 23.0),
                        fwhm_arcsec=0.8, saturation_e=9.0e4, n_cosmic_rays=300)
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range({repeat}):
    t0, c0 = time.perf_counter(), time.process_time()
    result = process_ccd(field.exposure, field.refcat, band="r", config=config)
    times.append((time.perf_counter() - t0, time.process_time() - c0))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": times, "peak_rss_mb": rss / 1024, "rss_before_mb": rss_before / 1024,
                  "n_src": len(result.src), "n_astrom": result.n_astrom_matched,
                  "astrom_rms_mas": result.astrom_rms_mas, "zp": result.zero_point,
                  "psf_fwhm_arcsec": result.psf_fwhm_arcsec}}))
"""


CHILD_SIMULATED = r"""
import json, resource, sys, time
import numpy as np
from astropy.io import fits
from dcflow.instruments import cfht_sim, raw_ccd_from_hdu
from dcflow.instruments.cfht_sim import SimConfig
from dcflow.stages.calibs import combine_bias, combine_flat
from dcflow.stages.isr import assemble_ccd, run_isr
from dcflow.stages.process_ccd import process_ccd

config = SimConfig(n_bias=2, n_flat=2, visits_per_filter=1)
specs = cfht_sim.campaign_exposures(config)
truth = cfht_sim.make_truth_catalog(config)
refcat = cfht_sim.make_reference_catalog(config, truth)
ccd = {ccd}

def raw(spec, stars=None):
    sim = cfht_sim.simulate_ccd(config, spec, ccd, stars=stars)
    return raw_ccd_from_hdu(fits.PrimaryHDU(data=sim.raw, header=sim.header), source="sim")

bias = combine_bias([assemble_ccd(raw(s)).image for s in specs if s.obstype == "bias"])
science = [s for s in specs if s.obstype == "object"][0]
flat = combine_flat(
    [assemble_ccd(raw(s)).image for s in specs if s.obstype == "flat" and s.band == science.band],
    bias=bias,
)
raw_ccd = raw(science, truth)
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range({repeat}):
    t0, c0 = time.perf_counter(), time.process_time()
    exposure = run_isr(raw_ccd, bias=bias, flat=flat).exposure
    t1, c1 = time.perf_counter(), time.process_time()
    result = process_ccd(exposure, refcat, band=science.band)
    t2, c2 = time.perf_counter(), time.process_time()
    times.append((t1 - t0, t2 - t1, c1 - c0, c2 - c1))
    del exposure, result
    if not times[1:]:
        rss_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": times, "peak_rss_mb": rss / 1024, "rss_before_mb": rss_before / 1024,
                  "first_rss_mb": rss_first / 1024,
                  "fwhm_arcsec": science.fwhm_arcsec, "band": science.band}}))
"""


def run_child(code: str) -> dict:
    # One core: no threaded BLAS in the measured process.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT, env=env
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stars", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ccd", type=int, default=13, help="simulated CCD for part 2")
    parser.add_argument(
        "--psf-flux-width",
        nargs="+",
        default=["model", "local"],
        help="processCcd psf_flux_width values timed side by side in part 1",
    )
    args = parser.parse_args()
    for width in args.psf_flux_width:
        code = CHILD_SYNTHETIC.format(
            tests=str(ROOT / "tests"),
            n_stars=args.n_stars,
            repeat=args.repeat,
            psf_flux_width=width,
        )
        res = run_child(code)
        if "error" in res:
            print(f"process_ccd (synthetic 2048x4612): failed: {res['error']}")
            continue
        wall = [w for w, _ in res["seconds"]]
        cpu = [c for _, c in res["seconds"]]
        print(
            f"process_ccd, psf_flux_width={width} (synthetic 2048x4612, {res['n_src']} sources, "
            f"{res['n_astrom']} astrometric matches): best {min(wall):.2f} s wall, "
            f"{min(cpu):.2f} s CPU (runs, wall/CPU s: "
            f"{', '.join(f'{w:.2f}/{c:.2f}' for w, c in res['seconds'])}); "
            f"peak RSS {res['peak_rss_mb']:.0f} MB (field alone "
            f"{res['rss_before_mb']:.0f} MB); astrom rms {res['astrom_rms_mas']:.1f} mas, "
            f"PSF FWHM {res['psf_fwhm_arcsec']:.3f} arcsec"
        )
    try:
        import dcflow.instruments.cfht_sim
        import dcflow.stages.isr  # noqa: F401
    except ImportError as err:
        print(f"ISR + process_ccd (cfht_sim): skipped, {err}")
        return
    res = run_child(CHILD_SIMULATED.format(ccd=args.ccd, repeat=args.repeat))
    if "error" in res:
        print(f"ISR + process_ccd (cfht_sim 2048x4612): failed: {res['error']}")
        return
    totals = [a + b for a, b, _, _ in res["seconds"]]
    k = int(np.argmin(totals))
    isr_s, proc_s, isr_cpu, proc_cpu = res["seconds"][k]
    print(
        f"ISR + process_ccd (cfht_sim CCD {args.ccd}, 2048x4612, {res['band']} band, seeing "
        f"{res['fwhm_arcsec']:.2f} arcsec): best {totals[k]:.2f} s wall (ISR {isr_s:.2f} s + "
        f"process_ccd {proc_s:.2f} s), {isr_cpu + proc_cpu:.2f} s CPU (ISR {isr_cpu:.2f} + "
        f"process_ccd {proc_cpu:.2f}); all runs wall: {', '.join(f'{t:.2f}' for t in totals)};"
        f" peak RSS {res['first_rss_mb']:.0f} MB after the first run, {res['peak_rss_mb']:.0f} MB"
        f" after all (inputs and masters alone {res['rss_before_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()
