# processCcd per visit: ISR, astrometric and photometric calibration of every CCD.
# Jobs, inputs and outputs: src/dcflow/pipeline/spec.py.


rule process_visit:
    input:
        unpack(get_inputs("process_visit")),
    output:
        **get_outputs("process_visit"),
    log:
        get_log("process_visit"),
    benchmark:
        get_benchmark("process_visit")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("process_visit"),
    params:
        **get_params("process_visit"),
    script:
        get_script("process_visit")
