"""Seconds and peak memory of warping CCDs onto a patch and assembling the patch's coadd.

Usage: .venv/bin/python benchmarks/coadd.py [--n-visits N] [--patch-inner P] [--reproject]

A full-size CFHT-like calexp (2048 x 4612 pixels at 0.187"/pixel, noise only) is warped onto
one LSST-sized patch (P + 2 x 100 pixels on a side at 0.2"/pixel, default 4200 x 4200):

1. `dcflow.stages.warp.warp_exposure` (cubic spline, WCS mapping on a 16-pixel grid);
2. with ``--reproject``, the same image and variance with ``reproject.reproject_interp``
   (bicubic / bilinear), the library alternative the warp stage was measured against;
3. `dcflow.stages.coadd.assemble_coadd` of N such warps (dithered by +-5"), for each rejection
   method; the memory figure is the growth of peak RSS over the N warps already in memory.

Each part runs in a fresh subprocess with BLAS / OpenMP limited to one thread, so its peak
RSS (ru_maxrss) is its own; wall and CPU seconds are both printed because the shared machine
is often loaded (CPU seconds are then the fairer figure). Prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMON = r"""
import json, resource, time
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from dcflow.campaign.skymap import SkyMapConfig, make_tracts, patch_info, patch_wcs
from dcflow.exposure import Exposure

config = SkyMapConfig(tract_ra_deg=(53.0,), tract_dec_deg=(-28.0,),
                      patch_inner_pixels={inner}, patch_border_pixels=100, n_patches=3)
tract = make_tracts(config)[0]
patch = patch_info(tract, 1, 1)
pwcs = patch_wcs(tract, patch)
rng = np.random.default_rng(0)
cra, cdec = pwcs.pixel_to_world_values(patch.shape[1] / 2, patch.shape[0] / 2)

def calexp(k):
    ny, nx = 4612, 2048
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [cra + rng.uniform(-5, 5) / 3600, cdec + rng.uniform(-5, 5) / 3600]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    scale = 0.187 / 3600
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    header = fits.Header({{"ZP": 28.0, "PSFFWHM": 0.7 + 0.05 * k, "VISIT": k, "AIRMASS": 1.1}})
    return Exposure(rng.normal(0, 20, (ny, nx)).astype(np.float32),
                    np.zeros((ny, nx), np.int32), np.full((ny, nx), 400.0, np.float32),
                    wcs, header)

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0
"""

CHILD_WARP = r"""
from dcflow.stages.warp import warp_exposure
c = calexp(0)
before = rss_mb()
result, wall, cpu = timed(lambda: warp_exposure(c, pwcs, patch.shape))
print(json.dumps({{"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_mb(), "before_mb": before,
                  "covered_mpix": result.n_covered_pixels / 1e6}}))
"""

CHILD_REPROJECT = r"""
from reproject import reproject_interp
c = calexp(0)
before = rss_mb()
def run():
    reproject_interp((c.image, c.wcs), pwcs, shape_out=patch.shape, order="bicubic")
    reproject_interp((c.variance, c.wcs), pwcs, shape_out=patch.shape, order="bilinear")
_, wall, cpu = timed(run)
print(json.dumps({{"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_mb(), "before_mb": before}}))
"""

CHILD_COADD = r"""
from dcflow.stages.coadd import CoaddConfig, assemble_coadd
from dcflow.stages.warp import warp_exposure
warps = [warp_exposure(calexp(k), pwcs, patch.shape).warp for k in range({n_visits})]
before = rss_mb()
config = CoaddConfig(rejection="{rejection}")
result, wall, cpu = timed(lambda: assemble_coadd(warps, config=config))
print(json.dumps({{"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_mb(), "before_mb": before,
                  "clipped": int(sum(result.n_clipped_pixels))}}))
"""


def run_child(code: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-visits", type=int, default=8, help="warps per coadd (default 8)")
    parser.add_argument("--patch-inner", type=int, default=4000, help="patch inner box, pixels")
    parser.add_argument("--reproject", action="store_true", help="also time reproject_interp")
    args = parser.parse_args()
    common = COMMON.format(inner=args.patch_inner)
    side = args.patch_inner + 200
    print(f'patch {side} x {side} px (0.2"/px); calexp 4612 x 2048 px (0.187"/px)')
    warp = run_child(common + CHILD_WARP.format())
    print(
        f"warp_exposure: {warp['wall_s']:.1f} s wall, {warp['cpu_s']:.1f} s CPU, "
        f"peak RSS {warp['peak_rss_mb']:.0f} MB ({warp['before_mb']:.0f} MB before), "
        f"{warp['covered_mpix']:.1f} Mpix covered"
    )
    if args.reproject:
        rep = run_child(common + CHILD_REPROJECT.format())
        print(
            f"reproject_interp (image bicubic + variance bilinear): {rep['wall_s']:.1f} s wall, "
            f"{rep['cpu_s']:.1f} s CPU, peak RSS {rep['peak_rss_mb']:.0f} MB; "
            f"warp_exposure is {rep['cpu_s'] / warp['cpu_s']:.1f}x faster (CPU)"
        )
    for rejection in ("compare_warp", "sigma_clip", "none"):
        co = run_child(common + CHILD_COADD.format(n_visits=args.n_visits, rejection=rejection))
        print(
            f"assemble_coadd {args.n_visits} warps, {rejection}: {co['wall_s']:.1f} s wall, "
            f"{co['cpu_s']:.1f} s CPU, peak RSS {co['peak_rss_mb']:.0f} MB "
            f"(+{co['peak_rss_mb'] - co['before_mb']:.0f} MB over the warps), "
            f"{co['clipped']} pixels clipped"
        )


if __name__ == "__main__":
    main()
