rule science_validation:
    input:
        srcs=get_validation_srcs,
        calexps=get_validation_calexps,
        truth=path("truth", instrument=CAMPAIGN.instrument),
    output:
        metrics=path("science_validation"),
        plot=report(
            path("science_validation_plot"),
            caption="../workflow/report/science_validation.rst",
            category="Science validation",
            labels={"stage": "processCcd"},
        ),
    log:
        log_path("science_validation", "campaign"),
    benchmark:
        benchmark_path("science_validation", "campaign")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        validation=config["validation"],
    script:
        stage_script("science_validation")
