"""Load one tile's catalogs into the campaign's database (a visit's src and forced_src, or a
patch's object) in one transaction, then write the job's marker (rows per table)."""

import logging
import os
import uuid

from dcflow import __version__
from dcflow.catalog_db import open_catalog_db
from dcflow.catalog_db.loading import patch_rows, visit_rows
from dcflow.dataids import normalize_data_id
from dcflow.io import read_table, read_wcs, write_json
from dcflow.joblog import run_logged

log = logging.getLogger("load_catalogs")


def main(*, tile, srcs, forced, calexps, objects, band, ccds, campaign, db_config, db_path,
         marker_path, run_id):  # fmt: skip
    provenance = {"campaign": campaign, "run_id": run_id, "code_version": __version__}
    if "visit" in tile:
        forced_wcs = [read_wcs(path) for path in calexps] if forced else []
        rows = visit_rows(
            [read_table(path) for path in srcs],
            [read_table(path) for path in forced],
            forced_wcs,
            visit=int(tile["visit"]),
            band=band,
            ccds=ccds,
            provenance=provenance,
        )
        filters = []
    else:
        rows, filters = patch_rows(read_table(objects), provenance=provenance)
    with open_catalog_db(db_config, db_path) as db:
        loaded = db.replace_tile(tile, rows, filters=filters, run_id=run_id)
    log.info("%s: loaded %s into the %s catalog database", tile, loaded, db.backend)
    write_json({"tile": tile, "rows": loaded, "run_id": run_id, "backend": db.backend}, marker_path)


if "snakemake" in globals():
    wildcards = dict(snakemake.wildcards)  # noqa: F821
    inputs = snakemake.input  # noqa: F821
    params = snakemake.params  # noqa: F821
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        tile=normalize_data_id(wildcards),
        srcs=list(inputs.get("srcs", [])),
        forced=list(inputs.get("forced", [])),
        calexps=list(inputs.get("calexps", [])),
        objects=inputs.get("objects", ""),
        band=params.get("band", ""),
        ccds=list(params.get("ccds", [])),
        campaign=params.campaign,
        db_config=params.catalog_db,
        db_path=params.catalog_db_path,
        marker_path=snakemake.output.loaded,  # noqa: F821
        run_id=os.environ.get("DCFLOW_RUN_ID") or uuid.uuid4().hex,
    )
