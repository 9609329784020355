"""Score every calexp/src of the campaign against the truth catalog; write metrics and a plot."""

import logging
from collections import defaultdict

import matplotlib.pyplot as plt
from astropy.table import vstack

from dcflow.configs import from_mapping
from dcflow.io import atomic_path, read_exposure, read_table, write_json
from dcflow.joblog import run_logged
from dcflow.stages.validation import MatchScoreConfig, footprint_mask, score_against_truth
from dcflow.validation_plots import accuracy_figure

log = logging.getLogger("science_validation")


def main(*, srcs, calexps, truth_path, metrics_path, plot_path, config):
    config = from_mapping(MatchScoreConfig, config)
    truth = read_table(truth_path)
    by_visit = defaultdict(list)
    for src_path, calexp_path in zip(srcs, calexps, strict=True):
        calexp = read_exposure(calexp_path)
        by_visit[int(calexp.header["EXPNUM"])].append((src_path, calexp))
    visits = {}
    plot_data = defaultdict(lambda: defaultdict(list))
    for visit, items in sorted(by_visit.items()):
        band = str(items[0][1].header["FILTER"])
        src = vstack([read_table(path) for path, _ in items])
        inside = footprint_mask(truth, [calexp for _, calexp in items])
        result = score_against_truth(src, truth, band=band, footprint_mask=inside, config=config)
        visits[str(visit)] = {
            "band": band,
            "n_sources": result.n_sources,
            "n_matched": result.n_matched,
            "n_accuracy": result.n_accuracy,
            "astrom_rms_mas": result.astrom_rms_mas,
            "mag_rms_mmag": result.mag_rms_mmag,
            "mag_median_mmag": result.mag_median_mmag,
            "n_completeness": result.n_completeness,
            "completeness": result.completeness,
            "snr10_mag": result.snr10_mag,
        }
        plot_data[band]["offsets_mas"].append(result.offsets_mas)
        plot_data[band]["mag_residuals_mmag"].append(result.mag_residuals_mmag)
        plot_data[band]["mags"].append(result.accuracy_mags)
    write_json(
        {"visits": visits, "config": {"accuracy_snr_min": config.accuracy_snr_min}}, metrics_path
    )
    figure = accuracy_figure(plot_data, title="processCcd vs truth")
    with atomic_path(plot_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        srcs=list(snakemake.input.srcs),  # noqa: F821
        calexps=list(snakemake.input.calexps),  # noqa: F821
        truth_path=snakemake.input.truth,  # noqa: F821
        metrics_path=snakemake.output.metrics,  # noqa: F821
        plot_path=snakemake.output.plot,  # noqa: F821
        config=snakemake.params.validation,  # noqa: F821
    )
