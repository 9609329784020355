# Config validation, the campaign's job graph, wildcard constraints and the rule adapters.
# The pipeline is described once, in src/dcflow/pipeline/spec.py; these adapters hand each
# rule its inputs, outputs, params and resources from that description.
from dcflow.campaign.index import CampaignIndex
from dcflow.config_schema import check_config
from dcflow.pipeline.graph import JobGraph
from dcflow.pipeline.payload import command_for, payload_script
from dcflow.pipeline.spec import stage

# the schema in workflow/schemas/config.schema.yaml, its defaults filled in
check_config(
    config, " ".join(map(str, workflow.overwrite_configfiles)) or "config.yaml"
)

GRAPH = JobGraph(CampaignIndex.from_config(config))
LAYOUT = GRAPH.index.layout


wildcard_constraints:
    visit=r"\d+",
    ccd=r"\d+",
    exposure=r"\d+",
    tract=r"\d+",
    patch=r"\d+,\d+",
    filter=GRAPH.filter_pattern(),


def get_inputs(rule):
    """Input function of a rule: the job's named inputs, from the pipeline spec."""

    def inputs(wildcards):
        return GRAPH.input_paths(rule, GRAPH.job_of(rule, wildcards))

    return inputs


def get_outputs(rule):
    """Named output patterns of a rule (report items wrapped with their captions)."""
    outputs = GRAPH.output_patterns(rule)
    for item in stage(rule).outputs:
        if item.caption:
            outputs[item.name] = report(
                outputs[item.name],
                caption=f"../workflow/report/{item.caption}",
                category=item.category,
                labels=GRAPH.report_labels(rule),
            )
    return outputs


def get_params(rule):
    """Config sections the stage reads, its per-job params and its site command, if any."""
    return GRAPH.params(rule, config, command=command_for(config, rule))


def get_resources(rule):
    """Default mem_mb and runtime (minutes) of a rule's jobs."""
    return {"mem_mb": stage(rule).mem_mb, "runtime": stage(rule).runtime}


def get_script(rule):
    """The script of a stage: its own, noop.py, or command.py (payload.commands)."""
    return f"../scripts/{payload_script(config, stage(rule).script, rule)}.py"


def get_log(rule):
    """Log file of one job, named after its rule and data id."""
    return LAYOUT.pattern("log", rule=rule, tile=GRAPH.tile_pattern(rule))


def get_benchmark(rule):
    """Benchmark file of one job, named after its rule and data id."""
    return LAYOUT.pattern("benchmark", rule=rule, tile=GRAPH.tile_pattern(rule))


def get_final_targets(wildcards):
    """The default target: the campaign's target products, or a shard's targets."""
    return GRAPH.final_targets(config)
