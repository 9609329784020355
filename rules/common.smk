# Config validation, the campaign registry, wildcard constraints and every input function.
# The logic lives in src/dcflow (targets.py, layout.py); these functions only adapt wildcards.
from snakemake.utils import validate

from dcflow.fe55_targets import fe55_inputs
from dcflow.targets import Campaign, filter_pattern, payload_script

validate(config, "../workflow/schemas/config.schema.yaml", set_default=True)

CAMPAIGN = Campaign.from_config(config)
LAYOUT = CAMPAIGN.layout


wildcard_constraints:
    visit=r"\d+",
    ccd=r"\d+",
    exposure=r"\d+",
    tract=r"\d+",
    patch=r"\d+,\d+",
    filter=filter_pattern(
        CAMPAIGN.registry.filters("flat") + CAMPAIGN.registry.filters("object")
    ),


def path(dataset_type, **fixed):
    """Path pattern of a dataset type, from the campaign layout (the only path builder)."""
    return LAYOUT.pattern(dataset_type, **fixed)


def stage_script(stage):
    """The stage script to run (scripts/<stage>.py), or scripts/noop.py under payload noop."""
    return f"../scripts/{payload_script(config, stage)}.py"


def log_path(rule, tile):
    """Log file of one job, named after its rule and data id."""
    return LAYOUT.pattern("log", rule=rule, tile=tile)


def benchmark_path(rule, tile):
    """Benchmark file of one job, named after its rule and data id."""
    return LAYOUT.pattern("benchmark", rule=rule, tile=tile)


def get_bias_raws(wildcards):
    return CAMPAIGN.bias_inputs(int(wildcards.ccd))


def get_flat_raws(wildcards):
    return CAMPAIGN.flat_inputs(int(wildcards.ccd), wildcards.filter)


def get_visit_inputs(wildcards):
    return CAMPAIGN.visit_inputs(int(wildcards.visit))


def get_visit_band(wildcards):
    return CAMPAIGN.visit_band(int(wildcards.visit))


def get_calexp_outputs():
    return CAMPAIGN.visit_outputs("calexp")


def get_src_outputs():
    return CAMPAIGN.visit_outputs("src")


def get_validation_srcs(wildcards):
    # a function (evaluated when the job is built), not a list built while parsing: a shard
    # without the validation job never lists every product of the campaign
    return CAMPAIGN.visit_products("src")


def get_validation_calexps(wildcards):
    return CAMPAIGN.visit_products("calexp")


def get_visit_calexps(wildcards):
    return CAMPAIGN.visit_calexps(int(wildcards.visit))


def get_coadd_warps(wildcards):
    return CAMPAIGN.coadd_warps(int(wildcards.tract), wildcards.patch, wildcards.filter)


def get_patch_coadds(wildcards):
    return CAMPAIGN.patch_coadds(int(wildcards.tract), wildcards.patch)


def get_forced_objects(wildcards):
    return CAMPAIGN.forced_objects(int(wildcards.visit))


def get_forced_outputs():
    return CAMPAIGN.visit_outputs("forced_src")


def get_fe55_gains(wildcards):
    return fe55_inputs(CAMPAIGN.fe55, LAYOUT, "fe55_gain", int(wildcards.ccd))


def get_fe55_truths(wildcards):
    return fe55_inputs(CAMPAIGN.fe55, LAYOUT, "fe55_truth", int(wildcards.ccd))


def get_final_targets(wildcards):
    return CAMPAIGN.final_targets()
