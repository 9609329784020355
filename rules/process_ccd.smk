rule process_visit:
    input:
        unpack(get_visit_inputs),
    output:
        calexps=get_calexp_outputs(),
        srcs=get_src_outputs(),
    log:
        log_path("process_visit", "visit={visit}"),
    benchmark:
        benchmark_path("process_visit", "visit={visit}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        instrument=CAMPAIGN.instrument,
        band=get_visit_band,
        isr=config["isr"],
        process_ccd=config["process_ccd"],
    script:
        stage_script("process_visit")
