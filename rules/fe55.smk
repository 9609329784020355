# Fe55 sensor gain: simulate each Fe55 exposure of a sensor, measure the gain of every
# amplifier per exposure, then combine a sensor's exposures.
# Jobs, inputs and outputs: src/dcflow/pipeline/spec.py.


rule fe55_simulate:
    input:
        unpack(get_inputs("fe55_simulate")),
    output:
        **get_outputs("fe55_simulate"),
    log:
        get_log("fe55_simulate"),
    benchmark:
        get_benchmark("fe55_simulate")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("fe55_simulate"),
    params:
        **get_params("fe55_simulate"),
    script:
        get_script("fe55_simulate")


rule fe55_gain:
    input:
        unpack(get_inputs("fe55_gain")),
    output:
        **get_outputs("fe55_gain"),
    log:
        get_log("fe55_gain"),
    benchmark:
        get_benchmark("fe55_gain")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("fe55_gain"),
    params:
        **get_params("fe55_gain"),
    script:
        get_script("fe55_gain")


rule fe55_summary:
    input:
        unpack(get_inputs("fe55_summary")),
    output:
        **get_outputs("fe55_summary"),
    log:
        get_log("fe55_summary"),
    benchmark:
        get_benchmark("fe55_summary")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("fe55_summary"),
    params:
        **get_params("fe55_summary"),
    script:
        get_script("fe55_summary")
