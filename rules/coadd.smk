# The sky-map half of the pipeline: warps per visit and patch, deep and template coadds per
# patch and filter, multi-band detection and Object measurement per patch, forced photometry
# per visit. Jobs, inputs and outputs: src/dcflow/pipeline/spec.py.


rule make_warp:
    input:
        unpack(get_inputs("make_warp")),
    output:
        **get_outputs("make_warp"),
    log:
        get_log("make_warp"),
    benchmark:
        get_benchmark("make_warp")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("make_warp"),
    params:
        **get_params("make_warp"),
    script:
        get_script("make_warp")


rule assemble_coadd:
    input:
        unpack(get_inputs("assemble_coadd")),
    output:
        **get_outputs("assemble_coadd"),
    log:
        get_log("assemble_coadd"),
    benchmark:
        get_benchmark("assemble_coadd")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("assemble_coadd"),
    params:
        **get_params("assemble_coadd"),
    script:
        get_script("assemble_coadd")


rule measure_patch:
    input:
        unpack(get_inputs("measure_patch")),
    output:
        **get_outputs("measure_patch"),
    log:
        get_log("measure_patch"),
    benchmark:
        get_benchmark("measure_patch")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("measure_patch"),
    params:
        **get_params("measure_patch"),
    script:
        get_script("measure_patch")


rule forced_photometry:
    input:
        unpack(get_inputs("forced_photometry")),
    output:
        **get_outputs("forced_photometry"),
    log:
        get_log("forced_photometry"),
    benchmark:
        get_benchmark("forced_photometry")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("forced_photometry"),
    params:
        **get_params("forced_photometry"),
    script:
        get_script("forced_photometry")
