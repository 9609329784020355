# The sky-map half of the pipeline: warps per visit and patch, deep and template coadds per
# patch and filter, multi-band detection and Object measurement per patch, forced photometry
# per visit. Patches come from the sky map in config["skymap"] (none without one).


rule make_warp:
    input:
        calexps=get_visit_calexps,
    output:
        warp=path("warp"),
    log:
        log_path("make_warp", "visit={visit}_tract={tract}_patch={patch}"),
    benchmark:
        benchmark_path("make_warp", "visit={visit}_tract={tract}_patch={patch}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        skymap=config.get("skymap", {}),
        warp=config["warp"],
    script:
        stage_script("make_warp")


rule assemble_coadd:
    input:
        warps=get_coadd_warps,
    output:
        deep=path("deepCoadd"),
        template=path("templateCoadd"),
    log:
        log_path("assemble_coadd", "filter={filter}_tract={tract}_patch={patch}"),
    benchmark:
        benchmark_path("assemble_coadd", "filter={filter}_tract={tract}_patch={patch}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        coadd=config["coadd"],
        template=config["template"],
    script:
        stage_script("assemble_coadd")


rule measure_patch:
    input:
        coadds=get_patch_coadds,
    output:
        detection=path("deepCoadd_det"),
        objects=path("object"),
    log:
        log_path("measure_patch", "tract={tract}_patch={patch}"),
    benchmark:
        benchmark_path("measure_patch", "tract={tract}_patch={patch}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        skymap=config.get("skymap", {}),
        multiband=config["multiband"],
        measurement=config["coadd_measurement"],
    script:
        stage_script("measure_patch")


rule forced_photometry:
    input:
        calexps=get_visit_calexps,
        objects=get_forced_objects,
    output:
        forced=get_forced_outputs(),
    log:
        log_path("forced_photometry", "visit={visit}"),
    benchmark:
        benchmark_path("forced_photometry", "visit={visit}")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        forced=config["forced_photometry"],
    script:
        stage_script("forced_photometry")
