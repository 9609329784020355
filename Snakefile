# dcflow: a survey reprocessing campaign as a Snakemake workflow.
#
# Output tree, under the campaign's output root (config layout.output_root; templates in
# src/dcflow/layout.py):
#   registry.sqlite3                    raw files and their data ids (written by `dcflow ingest`)
#   calib/bias/, calib/flat/<filter>/   master bias per CCD, master flat per filter and CCD
#   calexp/<visit>/, src/<visit>/       calibrated exposures and source tables per visit and CCD
#   validate/                           science validation metrics and plots
#   warp/, deepCoadd/, templateCoadd/   per (visit,) patch and filter on the sky map's tracts
#   deepCoadd_det/, object/             multi-band detection image and Object table per patch
#   forced_src/<visit>/                 forced photometry at Object positions per visit and CCD
#   deepDiff/<visit>/, diaSrc/<visit>/  difference images and DIASources per visit and CCD
#   diaObject/, diaSourceTable/, diaTracklet/   DIAObjects, associated DIASources, tracklets
#                                       per patch
#   fe55/                               Fe55 gain tables and histograms per sensor exposure
#   db/                                 the catalog database (embedded backend) and load markers
#   logs/<rule>/<tile>.log              one log per job; benchmarks/<rule>/<tile>.tsv likewise
# Raw data, the reference catalog and (for simulations) the truth catalog live under
# layout.input_root.
from snakemake.utils import min_version

min_version("9.0")


# the default campaign, unless a campaign is given with --configfile (dcflow always names its
# campaign's file): a second campaign must never inherit the default's sections
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/calibs.smk"
include: "rules/process_ccd.smk"
include: "rules/validation.smk"
include: "rules/coadd.smk"
include: "rules/alerts.smk"
include: "rules/fe55.smk"
include: "rules/catalog_db.smk"


rule all:
    default_target: True
    input:
        get_final_targets,
