"""Seconds and peak memory of difference imaging one full-size MegaCam CCD against its template.

Usage: .venv/bin/python benchmarks/diffim.py [--n-stars N] [--n-transients N] [--baseline-src DIR]

A science image and its template of 2048 x 4612 pixels (`dcflow.instruments.diffim_sim`:
Moffat beta 3 of 4.5 pixels FWHM against a sharper, deeper near-Gaussian template, both
varying across the CCD, N stars and N transients) are written to a temporary directory once.
Then, each in a fresh subprocess with BLAS / OpenMP limited to one thread (so its peak RSS,
``ru_maxrss``, is its own):

1. ``spatial``: `dcflow.stages.diffim.subtract_images` with the default spatially varying
   kernel (coefficients of order 2), then `dcflow.stages.dia_sources.detect_dia_sources`;
2. ``constant``: the same with one kernel for the whole CCD (``spatial_order=0``), the
   simpler alternative;
3. ``no-decorr``: the spatial kernel without the decorrelation convolution;
   ``no-register``: without the registration on stars (no shift-field removal, no
   mismatch noise in the DIASource errors);
4. ``zogy``: proper image subtraction (Zackay, Ofek & Gal-Yam 2016) written here in a few
   lines for the comparison only, with each image's true PSF at the CCD centre (constant
   over the CCD, as ZOGY assumes) and one FFT over the whole CCD; detection on its
   unit-variance difference with the same matched filter (no PSF photometry).

With ``--baseline-src DIR`` (the ``src`` directory of another checkout, e.g. ``git worktree
add /tmp/before <commit>`` then ``--baseline-src /tmp/before/src``), ``spatial`` is also run
with that code first on ``PYTHONPATH`` (row ``before``), the CPU ratio is printed, and the two
diaSrc tables are compared: same count, signs and flags, and the largest position and PSF-flux
differences (in units of the flux error).

No library is run: properimage builds on sep (SExtractor's library) and sfft on the
SExtractor program for its source selection (its fast path on CuPy and a GPU), which issue 17
rules out; neither is installed here. Peak RSS includes the loaded input arrays and
libraries (printed as the baseline, ~480 MB). Wall and CPU seconds are both printed: the
shared machine is often loaded, and CPU seconds are then the fairer figure. Prints figures;
it is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (4612, 2048)

CHILD = r"""
import json, resource, sys, time
import numpy as np
from scipy import ndimage
from dcflow.stages.diffim import DiffimConfig, subtract_images
from dcflow.stages.dia_sources import detect_dia_sources
from dcflow.instruments.diffim_sim import varying_moffat

d = sys.argv[1]
method = sys.argv[2]
label = sys.argv[3]
arrays = {k: np.load(f"{d}/{k}.npy") for k in
          ("science", "science_variance", "template", "template_variance", "source_free")}
meta = json.load(open(f"{d}/meta.json"))
mask = np.zeros(arrays["science"].shape, np.int32)
base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
sci_psf = varying_moffat(4.5, 3.0, arrays["science"].shape, width_slope_x=0.08,
                         width_slope_y=-0.05)
tx, ty = np.array(meta["tx"]), np.array(meta["ty"])
if method == "zogy":
    from scipy import fft
    from dcflow.stages.detection import detect_sources
    tmpl_psf = varying_moffat(3.4, 8.0, arrays["science"].shape, width_slope_x=-0.04,
                              width_slope_y=0.07, e1=0.05)
    t0, c0 = time.perf_counter(), time.process_time()
    ny, nx = arrays["science"].shape
    scale = 10 ** (0.4 * (30.0 - 31.4))
    new, ref = arrays["science"], arrays["template"] * scale
    var_n = float(np.median(arrays["science_variance"]))
    var_r = float(np.median(arrays["template_variance"])) * scale**2
    shape = (fft.next_fast_len(ny, True), fft.next_fast_len(nx, True))
    def psf_ft(model):
        stamp = model.psf_at(nx / 2, ny / 2).render(15)
        grid = np.zeros(shape)
        grid[:31, :31] = stamp / stamp.sum()
        return fft.rfft2(np.roll(grid, (-15, -15), axis=(0, 1)))
    pn, pr = psf_ft(sci_psf), psf_ft(tmpl_psf)
    num = pr * fft.rfft2(new, s=shape) - pn * fft.rfft2(ref, s=shape)
    den = np.sqrt(var_n * np.abs(pr) ** 2 + var_r * np.abs(pn) ** 2)
    den = np.maximum(den, 1e-12 * den.max())
    zimg = fft.irfft2(num / den, s=shape)[:ny, :nx].astype(np.float32)
    t1, c1 = time.perf_counter(), time.process_time()
    edge = np.zeros((ny, nx), bool)
    edge[:24], edge[-24:], edge[:, :24], edge[:, -24:] = True, True, True, True
    zimg[edge] = 0.0
    xs, ys = [], []
    for sign in (1, -1):
        det = detect_sources(sign * zimg, noise_rms=float(np.std(zimg[~edge])), fwhm_pix=4.5)
        xs.append(det.x_peak); ys.append(det.y_peak)
    t2, c2 = time.perf_counter(), time.process_time()
    px, py = np.concatenate(xs), np.concatenate(ys)
    dist = np.hypot(px[:, None] - tx[None], py[:, None] - ty[None])
    matched = (dist < 4.5).any(axis=1)
    free = arrays["source_free"] & ~edge
    print(json.dumps({
        "method": method, "diffim_wall_s": t1 - t0, "diffim_cpu_s": c1 - c0,
        "dia_wall_s": t2 - t1, "dia_cpu_s": c2 - c1,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "base_mb": base_mb, "noise_ratio": float(np.std(zimg[free])),
        "kernel_stars": 0, "kernel_sum": 1.0, "n_dia": int(px.size),
        "n_unmatched": int((~matched).sum()),
        "n_transients_found": int((dist < 2).any(axis=0).sum()), "n_transients": int(tx.size),
    }))
    sys.exit(0)
config = {
    "spatial": DiffimConfig(),
    "constant": DiffimConfig(spatial_order=0),
    "no-decorr": DiffimConfig(decorrelate=False),
    "no-register": DiffimConfig(register_on_stars=False),
}[method]
t0, c0 = time.perf_counter(), time.process_time()
diff = subtract_images(arrays["science"], arrays["science_variance"], mask,
                       arrays["template"], arrays["template_variance"], mask,
                       science_zero_point=30.0, template_zero_point=31.4,
                       science_psf=sci_psf, template_fwhm_pix=meta["template_fwhm_pix"],
                       config=config)
t1, c1 = time.perf_counter(), time.process_time()
reg = diff.registration
dia = detect_dia_sources(
    diff.image, diff.variance, diff.mask, diff.psf,
    subtracted_template=diff.subtracted_template,
    shift_rms_pix=reg.shift_rms_pix if reg else 0.0, flux_rms=reg.flux_rms if reg else 0.0,
    shape_rms_pix2=reg.shape_rms_pix2 if reg else 0.0,
)
t2, c2 = time.perf_counter(), time.process_time()
free = arrays["source_free"] & (diff.mask == 0)
z = diff.image[free] / np.sqrt(diff.variance[free])
tab = dia.table
np.savez(f"{d}/{label}.npz", **{c: np.asarray(tab[c]) for c in
         ("x", "y", "psf_flux", "psf_flux_err", "flags", "is_negative")})
dist = np.hypot(tab["x"][:, None] - tx[None], tab["y"][:, None] - ty[None])
matched = (dist < diff.psf.fwhm_pix).any(axis=1)
print(json.dumps({
    "method": label,
    "diffim_wall_s": t1 - t0, "diffim_cpu_s": c1 - c0,
    "dia_wall_s": t2 - t1, "dia_cpu_s": c2 - c1,
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    "base_mb": base_mb,
    "noise_ratio": float(np.std(z)),
    "kernel_stars": diff.kernel.n_stars, "kernel_sum": diff.kernel.kernel_sum,
    "n_dia": len(tab), "n_unmatched": int((~matched).sum()),
    "n_transients_found": int((dist < 2).any(axis=0).sum()), "n_transients": int(tx.size),
}))
"""


def _simulate(directory: Path, n_stars: int, n_transients: int) -> None:
    import numpy as np
    from scipy import ndimage

    from dcflow.instruments.diffim_sim import simulate_diffim_pair

    pair = simulate_diffim_pair(
        SHAPE,
        n_stars=n_stars,
        transient_fluxes=np.geomspace(2000.0, 20000.0, n_transients),
        seed=11,
    )
    seeds = np.zeros(SHAPE, dtype=bool)
    for table in (pair.stars, pair.transients):
        yi = np.clip(np.rint(table["y"]).astype(int), 0, SHAPE[0] - 1)
        xi = np.clip(np.rint(table["x"]).astype(int), 0, SHAPE[1] - 1)
        seeds[yi, xi] = True
    free = ~ndimage.maximum_filter(seeds, size=31)
    for name in ("science", "science_variance", "template", "template_variance"):
        np.save(directory / f"{name}.npy", getattr(pair, name))
    np.save(directory / "source_free.npy", free)
    centre = pair.template_psf.psf_at(SHAPE[1] / 2, SHAPE[0] / 2)
    meta = {
        "template_fwhm_pix": centre.fwhm_pix,
        "tx": [float(v) for v in pair.transients["x"]],
        "ty": [float(v) for v in pair.transients["y"]],
    }
    (directory / "meta.json").write_text(json.dumps(meta))


def main() -> None:
    """Simulate once, run each method in its own one-thread subprocess, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stars", type=int, default=2000)
    parser.add_argument("--n-transients", type=int, default=100)
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="src directory of another checkout: run spatial with it too and compare",
    )
    args = parser.parse_args()
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffim-bench-") as tmp:
        _simulate(Path(tmp), args.n_stars, args.n_transients)
        runs = [(m, m, env) for m in ("spatial", "no-register", "constant", "no-decorr", "zogy")]
        if args.baseline_src is not None:
            before_env = dict(env, PYTHONPATH=str(args.baseline_src.resolve()))
            runs.insert(0, ("spatial", "before", before_env))
        for method, label, run_env in runs:
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, tmp, method, label],
                env=run_env,
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        comparison = _compare_tables(Path(tmp)) if args.baseline_src is not None else ""
    head = (
        f"{'method':<11} {'diffim wall/cpu s':>18} {'diaSrc wall/cpu s':>18} {'cpu s':>6} "
        f"{'peak MB':>8} {'(base)':>7} {'noise':>6} {'stars':>5} {'k sum':>6} "
        f"{'diaSrc':>6} {'false':>5} {'found':>8}"
    )
    sys.stdout.write(
        f"one MegaCam CCD {SHAPE[1]} x {SHAPE[0]}, {args.n_stars} stars, "
        f"{args.n_transients} transients; one thread\n{head}\n"
    )
    for r in rows:
        sys.stdout.write(
            f"{r['method']:<11} {r['diffim_wall_s']:>8.2f} /{r['diffim_cpu_s']:>8.2f} "
            f"{r['dia_wall_s']:>8.2f} /{r['dia_cpu_s']:>8.2f} "
            f"{r['diffim_cpu_s'] + r['dia_cpu_s']:>6.2f} {r['peak_mb']:>8.0f} "
            f"{r['base_mb']:>7.0f} {r['noise_ratio']:>6.3f} {r['kernel_stars']:>5d} "
            f"{r['kernel_sum']:>6.3f} {r['n_dia']:>6d} {r['n_unmatched']:>5d} "
            f"{r['n_transients_found']:>4d}/{r['n_transients']:<3d}\n"
        )
    sys.stdout.write(
        "cpu s = difference + diaSrc CPU seconds (target <= 5 on one core); "
        "noise = std(diff / sqrt(variance)) away from sources (1 = variance plane true); "
        "false = diaSrc farther than one PSF FWHM from every transient;\n"
        "found = transients with a diaSrc within 2 px\n"
    )
    if args.baseline_src is not None:
        cpu = {r["method"]: r["diffim_cpu_s"] + r["dia_cpu_s"] for r in rows}
        sys.stdout.write(
            f"spatial CPU {cpu['spatial']:.2f} s against {cpu['before']:.2f} s before "
            f"(ratio {cpu['spatial'] / cpu['before']:.2f}); {comparison}\n"
        )


def _compare_tables(directory: Path) -> str:
    """How the ``spatial`` diaSrc table differs from the ``before`` one (nearest pairs)."""
    import numpy as np
    from scipy.spatial import cKDTree

    new, old = np.load(directory / "spatial.npz"), np.load(directory / "before.npz")
    if new["x"].size != old["x"].size:
        return f"diaSrc counts differ: {new['x'].size} against {old['x'].size}"
    if new["x"].size == 0:
        return "no diaSrc in either"
    shift, k = cKDTree(np.column_stack([old["x"], old["y"]])).query(
        np.column_stack([new["x"], new["y"]])
    )
    paired = np.unique(k).size == k.size
    same = paired and all(np.array_equal(new[c], old[c][k]) for c in ("flags", "is_negative"))
    flux = np.abs(new["psf_flux"] - old["psf_flux"][k]) / old["psf_flux_err"][k]
    return (
        f"diaSrc: {new['x'].size} in both, one-to-one {paired}, signs and flags "
        f"{'equal' if same else 'DIFFER'}, max position difference {shift.max():.1e} px, "
        f"max PSF-flux difference {flux.max():.1e} sigma"
    )


if __name__ == "__main__":
    main()
