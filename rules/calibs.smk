rule bias:
    input:
        raws=get_bias_raws,
    output:
        bias=path("bias"),
    log:
        log_path("bias", "ccd={ccd}"),
    benchmark:
        benchmark_path("bias", "ccd={ccd}")
    params:
        isr=config["isr"],
        calibs=config["calibs"],
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/make_bias.py"


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
    params:
        isr=config["isr"],
        calibs=config["calibs"],
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/make_flat.py"
