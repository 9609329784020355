# Science validation of processCcd against the simulation's truth.
# Jobs, inputs and outputs: src/dcflow/pipeline/spec.py.


rule science_validation:
    input:
        unpack(get_inputs("science_validation")),
    output:
        **get_outputs("science_validation"),
    log:
        get_log("science_validation"),
    benchmark:
        get_benchmark("science_validation")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("science_validation"),
    params:
        **get_params("science_validation"),
    script:
        get_script("science_validation")
