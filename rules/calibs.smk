# Calibration products: master bias per CCD, master flat per filter and CCD (raw cameras).
# Jobs, inputs and outputs: src/dcflow/pipeline/spec.py.


rule bias:
    input:
        unpack(get_inputs("bias")),
    output:
        **get_outputs("bias"),
    log:
        get_log("bias"),
    benchmark:
        get_benchmark("bias")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("bias"),
    params:
        **get_params("bias"),
    script:
        get_script("bias")


rule flat:
    input:
        unpack(get_inputs("flat")),
    output:
        **get_outputs("flat"),
    log:
        get_log("flat"),
    benchmark:
        get_benchmark("flat")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("flat"),
    params:
        **get_params("flat"),
    script:
        get_script("flat")
