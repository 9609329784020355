"""DIAObjects and tracklets of one patch from the DIASources of the visits overlapping it."""

import logging

from astropy.table import Table, vstack

from dcflow.campaign.skymap import (
    SkyMapConfig,
    make_tracts,
    parse_patch_name,
    patch_info,
    sky_to_tract_pixels,
)
from dcflow.catalog_schema import annotate
from dcflow.configs import from_mapping
from dcflow.io import read_table, write_table
from dcflow.joblog import run_logged
from dcflow.stages.dia_association import DiaAssociationConfig, associate_dia_sources

log = logging.getLogger("dia_association")


def main(
    *, dia_source_paths, objects_path, sources_path, tracklets_path, tract, patch, filters,
    skymap_config, config,
):  # fmt: skip
    tract_info = make_tracts(from_mapping(SkyMapConfig, skymap_config))[int(tract)]
    info = patch_info(tract_info, *parse_patch_name(patch))
    tables = [read_table(path) for path in dia_source_paths]
    sources = vstack(tables, metadata_conflicts="silent") if tables else Table()
    if len(sources):
        # each DIASource belongs to the patch whose inner region holds it (borders overlap)
        x, y, _ = sky_to_tract_pixels(tract_info, sources["ra"], sources["dec"])
        sources = sources[info.inner.contains(x, y)]
    else:
        sources = tables[0][:0] if tables else sources
    result = associate_dia_sources(
        sources, filters=tuple(filters), config=from_mapping(DiaAssociationConfig, config)
    )
    sources["diaObjectId"] = result.dia_object_id
    write_table(annotate(result.dia_objects, "diaObject", filters=filters), objects_path)
    write_table(annotate(sources, "diaSource"), sources_path)
    write_table(annotate(result.tracklets, "diaTracklet"), tracklets_path)
    log.info(
        "%s: %d DIASources of %d CCD-visits, %d matched, %d DIAObjects, %d tracklet rows",
        objects_path, len(sources), len(dia_source_paths), result.n_matched,
        len(result.dia_objects), len(result.tracklets),
    )  # fmt: skip


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        dia_source_paths=list(snakemake.input.dia_sources),  # noqa: F821
        objects_path=snakemake.output.objects,  # noqa: F821
        sources_path=snakemake.output.sources,  # noqa: F821
        tracklets_path=snakemake.output.tracklets,  # noqa: F821
        tract=snakemake.wildcards.tract,  # noqa: F821
        patch=snakemake.wildcards.patch,  # noqa: F821
        filters=snakemake.params.filters,  # noqa: F821
        skymap_config=snakemake.params.skymap,  # noqa: F821
        config=snakemake.params.dia_association,  # noqa: F821
    )
