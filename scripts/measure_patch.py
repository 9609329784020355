"""Multi-band detection and Object measurement of one patch."""

import logging

from dcflow.campaign.skymap import SkyMapConfig, make_tracts, parse_patch_name, patch_info
from dcflow.configs import from_mapping
from dcflow.exposure import Exposure
from dcflow.io import read_exposure, read_fits, write_exposure, write_table
from dcflow.joblog import run_logged
from dcflow.stages.coadd_measurement import CoaddMeasurementConfig, measure_coadds
from dcflow.stages.multiband import MultibandConfig, chi2_detection_image

log = logging.getLogger("measure_patch")


def main(*, coadds, detection_path, objects_path, tract, patch, skymap_config, configs):
    tract_info = make_tracts(from_mapping(SkyMapConfig, skymap_config))[int(tract)]
    info = patch_info(tract_info, *parse_patch_name(patch))
    exposures, coverages = {}, {}
    for path in coadds:
        exposure = read_exposure(path)
        band = str(exposure.header["FILTER"])
        exposures[band] = exposure
        coverages[band] = read_fits(path)["COVERAGE"].data
    detection = chi2_detection_image(
        exposures, config=from_mapping(MultibandConfig, configs["multiband"])
    )
    result = measure_coadds(
        exposures,
        detection,
        info,
        coverages=coverages,
        config=from_mapping(CoaddMeasurementConfig, configs["measurement"]),
    )
    reference = next(iter(exposures.values()))
    write_exposure(
        Exposure(
            image=detection.significance,
            mask=reference.mask,
            variance=detection.chi2,
            wcs=reference.wcs,
            header=reference.header,
        ),
        detection_path,
        extra_planes={"NFILTERS": detection.n_filters},
    )
    write_table(result.objects, objects_path)
    log.info("%s: %d Objects from %d peaks", objects_path, len(result.objects), result.n_peaks)


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        coadds=list(snakemake.input.coadds),  # noqa: F821
        detection_path=snakemake.output.detection,  # noqa: F821
        objects_path=snakemake.output.objects,  # noqa: F821
        tract=snakemake.wildcards.tract,  # noqa: F821
        patch=snakemake.wildcards.patch,  # noqa: F821
        skymap_config=snakemake.params.skymap,  # noqa: F821
        configs={
            "multiband": snakemake.params.multiband,  # noqa: F821
            "measurement": snakemake.params.coadd_measurement,  # noqa: F821
        },
    )
