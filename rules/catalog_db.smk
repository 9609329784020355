# Catalog loading: each visit's src and forced_src, and each patch's object, into the
# campaign's catalog database (config catalog_db), one transaction per tile. Jobs, inputs and
# outputs: src/dcflow/pipeline/spec.py.


rule load_visit_catalogs:
    input:
        unpack(get_inputs("load_visit_catalogs")),
    output:
        **get_outputs("load_visit_catalogs"),
    log:
        get_log("load_visit_catalogs"),
    benchmark:
        get_benchmark("load_visit_catalogs")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("load_visit_catalogs"),
    params:
        **get_params("load_visit_catalogs"),
    script:
        get_script("load_visit_catalogs")


rule load_patch_catalogs:
    input:
        unpack(get_inputs("load_patch_catalogs")),
    output:
        **get_outputs("load_patch_catalogs"),
    log:
        get_log("load_patch_catalogs"),
    benchmark:
        get_benchmark("load_patch_catalogs")
    conda:
        "../envs/pipeline.yaml"
    resources:
        **get_resources("load_patch_catalogs"),
    params:
        **get_params("load_patch_catalogs"),
    script:
        get_script("load_patch_catalogs")
