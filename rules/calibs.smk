rule bias:
    input:
        raws=get_bias_raws,
    output:
        bias=path("bias"),
    log:
        log_path("bias", "ccd={ccd}"),
    benchmark:
        benchmark_path("bias", "ccd={ccd}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        isr=config["isr"],
        calibs=config["calibs"],
    script:
        stage_script("make_bias")


rule flat:
    input:
        raws=get_flat_raws,
        bias=path("bias"),
    output:
        flat=path("flat"),
    log:
        log_path("flat", "filter={filter}_ccd={ccd}"),
    benchmark:
        benchmark_path("flat", "filter={filter}_ccd={ccd}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        isr=config["isr"],
        calibs=config["calibs"],
    script:
        stage_script("make_flat")
