# Fe55 sensor gain: measure the gain of every amplifier per registered Fe55 exposure, the
# photon-transfer gain per sensor from its flat and bias pairs, then combine a sensor's
# exposures and set them against photon transfer. The exposures, real or made by
# `dcflow simulate`, are raws of the registry: no rule here writes under the input root.
# Jobs, inputs and outputs: src/dcflow/pipeline/spec.py.


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


rule photon_transfer:
    input:
        unpack(get_inputs("photon_transfer")),
    output:
        **get_outputs("photon_transfer"),
    log:
        get_log("photon_transfer"),
    benchmark:
        get_benchmark("photon_transfer")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("photon_transfer"),
    params:
        **get_params("photon_transfer"),
    script:
        get_script("photon_transfer")


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
