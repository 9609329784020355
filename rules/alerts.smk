# Alert production: difference images and DIASources per visit and CCD (against the
# templateCoadd), DIAObjects and tracklets per patch. Jobs, inputs and outputs:
# src/dcflow/pipeline/spec.py.


rule diffim:
    input:
        unpack(get_inputs("diffim")),
    output:
        **get_outputs("diffim"),
    log:
        get_log("diffim"),
    benchmark:
        get_benchmark("diffim")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("diffim"),
    params:
        **get_params("diffim"),
    script:
        get_script("diffim")


rule dia_association:
    input:
        unpack(get_inputs("dia_association")),
    output:
        **get_outputs("dia_association"),
    log:
        get_log("dia_association"),
    benchmark:
        get_benchmark("dia_association")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("dia_association"),
    params:
        **get_params("dia_association"),
    script:
        get_script("dia_association")
