# Fe55 sensor gain (issue 9): simulate each Fe55 exposure of a sensor, measure the gain of
# every amplifier per exposure (one job per exposure: the amplifiers of a frame take seconds
# together), then combine a sensor's exposures. Geometry and source: config["fe55"]; analysis
# settings: config["fe55_gain"].


rule fe55_simulate:
    output:
        raw=path("fe55_raw"),
        truth=path("fe55_truth"),
    log:
        log_path("fe55_simulate", "ccd={ccd}_exposure={exposure}"),
    benchmark:
        benchmark_path("fe55_simulate", "ccd={ccd}_exposure={exposure}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        fe55=config["fe55"],
    script:
        stage_script("fe55_simulate")


rule fe55_gain:
    input:
        raw=path("fe55_raw"),
    output:
        table=path("fe55_gain"),
        plot=report(
            path("fe55_plot"),
            caption="../workflow/report/fe55_gain.rst",
            category="Fe55 gain",
            labels={"ccd": "{ccd}", "exposure": "{exposure}"},
        ),
    log:
        log_path("fe55_gain", "ccd={ccd}_exposure={exposure}"),
    benchmark:
        benchmark_path("fe55_gain", "ccd={ccd}_exposure={exposure}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        fe55=config["fe55"],
        analysis=config["fe55_gain"],
    script:
        stage_script("fe55_gain")


rule fe55_summary:
    input:
        gains=get_fe55_gains,
        truths=get_fe55_truths,
    output:
        summary=path("fe55_summary"),
    log:
        log_path("fe55_summary", "ccd={ccd}"),
    benchmark:
        benchmark_path("fe55_summary", "ccd={ccd}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    script:
        stage_script("fe55_summary")
