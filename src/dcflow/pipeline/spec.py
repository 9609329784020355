"""The pipeline, declared once: stages, their job axes, inputs, outputs, resources and shards.

Everything that knows the job graph reads this table: the Snakemake rules (through the
adapters of rules/common.smk), the per-job reference planner, the analytic planner's needrun
passes, the shards and their hashes, the synthetic inventories and the plan rows. Adding a
stage means adding a `Stage` here, its rule block in rules/, its script and its algorithm.

A job's inputs are named by dataset type. A dataset type that a stage writes is an upstream
product; any other (raw, refcat, truth, SDSS side files) comes from the registry or the
layout. Which upstream jobs a job reads is a relation between data ids: ``match`` lists the
keys that must be equal (empty: every upstream job), or ``relation="overlap"`` pairs a visit
with the sky-map patches its field overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "CONDITIONS",
    "SPACES",
    "STAGES",
    "TARGET_RULE",
    "Input",
    "Output",
    "Space",
    "Stage",
    "stage",
]

TARGET_RULE = "all"
"""The rule that asks for the campaign's final products (no work of its own)."""


@dataclass(frozen=True, slots=True)
class Space:
    """A job axis: the data id keys naming one job of a stage, and what each job carries.

    Attributes
    ----------
    keys : tuple of str
        Wildcards of the stage's jobs (the data id of a job).
    attributes : tuple of str
        Keys that are a function of the job's data id (a visit's filter), usable in matches.
    """

    keys: tuple[str, ...]
    attributes: tuple[str, ...] = ()


SPACES: dict[str, Space] = {
    "ccd": Space(("ccd",)),
    "filter_ccd": Space(("filter", "ccd")),
    "visit": Space(("visit",), ("filter",)),
    "campaign": Space(()),
    "visit_patch": Space(("visit", "tract", "patch"), ("filter",)),
    "patch_filter": Space(("filter", "tract", "patch")),
    "patch": Space(("tract", "patch")),
    "overlapping_visit": Space(("visit",), ("filter",)),
    "sensor_exposure": Space(("ccd", "exposure")),
    "sensor": Space(("ccd",)),
    "ptc_sensor": Space(("ccd",)),
}
"""Every job axis a stage may run over. ``ccd`` and ``filter_ccd`` span the science CCDs;
``visit_patch`` every planning-time (visit, patch) overlap; ``patch_filter`` every patch and
filter with at least one overlapping visit; ``overlapping_visit`` the science visits that
overlap a patch; ``sensor*`` the sensors and Fe55 exposures of the registry (obstype
``fe55``, registered by `dcflow ingest` like any raw); ``ptc_sensor`` those of them with
flat and bias pairs too."""

CONDITIONS = ("needs_calibs", "processed_frames", "has_truth", "has_skymap", "has_fe55")
"""Campaign traits a stage or input may depend on (see `dcflow.pipeline.graph`)."""


@dataclass(frozen=True, slots=True)
class Input:
    """One named input of a stage.

    Attributes
    ----------
    name : str
        The input's name in the rule (``snakemake.input.<name>`` in the script).
    dataset : str
        Dataset type read.
    match : tuple of str
        Data id keys an upstream job must share with this job (empty: every upstream job).
        For an external dataset: keys of the job that fill its template.
    relation : str
        ``"match"`` (default) or ``"overlap"`` (a visit's job reads the products of every
        patch its field overlaps, of the visit's filter when they are per filter; a patch's
        job reads those of every visit overlapping it).
    obstype : str
        For ``raw`` inputs: the registry's exposure type read (``bias``, ``flat``, ``object``,
        or a sensor type of `dcflow.campaign.registry.SENSOR_OBSTYPES`).
    fan_out : tuple of str
        Keys an external dataset spans per job (``ccd``: one file per science CCD).
    when : str
        A `CONDITIONS` entry that must hold for the input to exist, or empty.
    """

    name: str
    dataset: str
    match: tuple[str, ...] = ()
    relation: str = "match"
    obstype: str = ""
    fan_out: tuple[str, ...] = ()
    when: str = ""


@dataclass(frozen=True, slots=True)
class Output:
    """One named output of a stage.

    Attributes
    ----------
    name : str
        The output's name in the rule.
    dataset : str
        Dataset type written (its template's keys beyond the job's are fanned out over the
        science CCDs: a visit's job writes one calexp per CCD).
    target : bool
        Whether the campaign's final target (rule ``all``) asks for it.
    caption : str
        For a report item: the caption file under workflow/report/ (empty: not in the report).
    category : str
        Report category.
    verdict : str
        For a table whose rows the stage may judge untrusted (columns ``trusted`` and
        ``verdict``): the header keyword counting those rows; ``dcflow status`` and ``failed``
        report such a table as untrusted, never as a clean success. Empty: no verdict.
    """

    name: str
    dataset: str
    target: bool = False
    caption: str = ""
    category: str = ""
    verdict: str = ""


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of the pipeline: one Snakemake rule.

    Attributes
    ----------
    rule : str
        Rule name (also the ledger's and the plan's stage name).
    space : str
        Job axis, a key of `SPACES`.
    outputs, inputs : tuple
        What a job writes and reads.
    script : str
        The built-in payload: ``scripts/<script>.py``.
    sections : tuple of str
        Config sections the stage reads (its params, its shard hash).
    job_params : tuple of str
        Per-job params besides the sections: ``instrument``, ``band`` (the visit's filter),
        ``campaign`` (its name), ``catalog_db_path`` (the embedded catalog database),
        ``ccds`` (the science CCDs, in fan-out order), ``filters`` (the campaign's filters).
    mem_mb, runtime : int
        Default memory (MB) and run time (minutes) of a job.
    shard : str
        The kind of shard its jobs run in (`dcflow.campaign.shards`).
    when : str
        A `CONDITIONS` entry that must hold for the stage to have jobs, or empty.
    """

    rule: str
    space: str
    outputs: tuple[Output, ...]
    inputs: tuple[Input, ...]
    script: str
    sections: tuple[str, ...] = ()
    job_params: tuple[str, ...] = ()
    mem_mb: int = 1000
    runtime: int = 10
    shard: str = ""
    when: str = ""
    family: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"stage {self.rule}: unknown space {self.space!r}")
        for item in (self, *self.inputs):
            if item.when and item.when not in CONDITIONS:
                raise ValueError(f"stage {self.rule}: unknown condition {item.when!r}")

    @property
    def keys(self) -> tuple[str, ...]:
        """The data id keys of one job (its wildcards)."""
        return SPACES[self.space].keys


_PIPELINE = "Instrument signature removal, processCcd, coadds, forced photometry"

STAGES: tuple[Stage, ...] = (
    Stage(
        "bias",
        "ccd",
        outputs=(Output("bias", "bias"),),
        inputs=(Input("raws", "raw", ("ccd",), obstype="bias"),),
        script="make_bias",
        sections=("isr", "calibs"),
        shard="calibs",
        when="needs_calibs",
        family="calibs",
    ),
    Stage(
        "flat",
        "filter_ccd",
        outputs=(Output("flat", "flat"),),
        inputs=(
            Input("raws", "raw", ("filter", "ccd"), obstype="flat"),
            Input("bias", "bias", ("ccd",)),
        ),
        script="make_flat",
        sections=("isr", "calibs"),
        shard="calibs",
        when="needs_calibs",
        family="calibs",
    ),
    Stage(
        "process_visit",
        "visit",
        outputs=(Output("calexps", "calexp", target=True), Output("srcs", "src", target=True)),
        inputs=(
            Input("raws", "raw", ("visit",), obstype="object"),
            Input("biases", "bias", when="needs_calibs"),
            Input("flats", "flat", ("filter",), when="needs_calibs"),
            Input(
                "masks", "sdss_mask", ("visit", "filter"), fan_out=("ccd",), when="processed_frames"
            ),
            Input(
                "psfields",
                "sdss_psfield",
                ("visit", "filter"),
                fan_out=("ccd",),
                when="processed_frames",
            ),
            Input(
                "tsfields",
                "sdss_tsfield",
                ("visit", "filter"),
                fan_out=("ccd",),
                when="processed_frames",
            ),
            Input("refcat", "refcat"),
        ),
        script="process_visit",
        sections=("isr", "process_ccd"),
        job_params=("instrument", "band"),
        mem_mb=2000,
        runtime=30,
        shard="visits",
        family="process_ccd",
    ),
    Stage(
        "science_validation",
        "campaign",
        outputs=(
            Output("metrics", "science_validation", target=True),
            Output(
                "plot",
                "science_validation_plot",
                caption="science_validation.rst",
                category="Science validation",
            ),
        ),
        inputs=(
            Input("srcs", "src"),
            Input("calexps", "calexp"),
            Input("truth", "truth"),
        ),
        script="science_validation",
        sections=("validation",),
        mem_mb=2000,
        shard="final",
        when="has_truth",
        family="validation",
    ),
    Stage(
        "make_warp",
        "visit_patch",
        outputs=(Output("warp", "warp"),),
        inputs=(Input("calexps", "calexp", ("visit",)),),
        script="make_warp",
        sections=("skymap", "warp"),
        mem_mb=2000,
        runtime=15,
        shard="patches",
        when="has_skymap",
        family="coadd",
    ),
    Stage(
        "assemble_coadd",
        "patch_filter",
        outputs=(
            Output("deep", "deepCoadd"),
            Output("template", "templateCoadd", target=True),
            Output("template_alternates", "templateCoadd_otherNights"),
        ),
        inputs=(Input("warps", "warp", ("tract", "patch", "filter")),),
        script="assemble_coadd",
        sections=("coadd", "template"),
        mem_mb=4000,
        runtime=30,
        shard="patches",
        when="has_skymap",
        family="coadd",
    ),
    Stage(
        "measure_patch",
        "patch",
        outputs=(Output("detection", "deepCoadd_det"), Output("objects", "object", target=True)),
        inputs=(Input("coadds", "deepCoadd", ("tract", "patch")),),
        script="measure_patch",
        sections=("skymap", "multiband", "coadd_measurement"),
        mem_mb=4000,
        runtime=30,
        shard="patches",
        when="has_skymap",
        family="coadd",
    ),
    Stage(
        "forced_photometry",
        "overlapping_visit",
        outputs=(Output("forced", "forced_src", target=True),),
        inputs=(
            Input("calexps", "calexp", ("visit",)),
            Input("objects", "object", relation="overlap"),
        ),
        script="forced_photometry",
        sections=("forced_photometry",),
        mem_mb=2000,
        runtime=30,
        shard="forced",
        when="has_skymap",
        family="coadd",
    ),
    Stage(
        "diffim",
        "overlapping_visit",
        outputs=(
            Output("deep_diffs", "deepDiff"),
            Output("dia_sources", "diaSrc", target=True),
            Output("plot", "diffim_plot", caption="diffim.rst", category="Alert production"),
        ),
        inputs=(
            Input("calexps", "calexp", ("visit",)),
            Input("templates", "templateCoadd", relation="overlap"),
            Input("template_alternates", "templateCoadd_otherNights", relation="overlap"),
        ),
        script="diffim",
        sections=("warp", "diffim", "dia_source"),
        job_params=("band",),
        mem_mb=3000,
        runtime=30,
        shard="forced",
        when="has_skymap",
        family="alerts",
    ),
    Stage(
        "dia_association",
        "patch",
        outputs=(
            Output("objects", "diaObject", target=True),
            Output("sources", "diaSourceTable"),
            Output("tracklets", "diaTracklet", target=True),
        ),
        inputs=(Input("dia_sources", "diaSrc", relation="overlap"),),
        script="dia_association",
        sections=("skymap", "dia_association"),
        job_params=("filters",),
        mem_mb=2000,
        runtime=15,
        shard="alerts",
        when="has_skymap",
        family="alerts",
    ),
    Stage(
        "load_visit_catalogs",
        "visit",
        outputs=(Output("loaded", "catalog_load_visit", target=True),),
        inputs=(
            Input("srcs", "src", ("visit",)),
            Input("forced", "forced_src", ("visit",), when="has_skymap"),
            Input("calexps", "calexp", ("visit",), when="has_skymap"),
        ),
        script="load_catalogs",
        sections=("catalog_db",),
        job_params=("campaign", "catalog_db_path", "band", "ccds"),
        mem_mb=2000,
        runtime=10,
        shard="catalogs",
        family="catalog_db",
    ),
    Stage(
        "load_patch_catalogs",
        "patch",
        outputs=(Output("loaded", "catalog_load_patch", target=True),),
        inputs=(Input("objects", "object", ("tract", "patch")),),
        script="load_catalogs",
        sections=("catalog_db",),
        job_params=("campaign", "catalog_db_path"),
        mem_mb=2000,
        runtime=10,
        shard="patches",
        when="has_skymap",
        family="catalog_db",
    ),
    Stage(
        "fe55_gain",
        "sensor_exposure",
        outputs=(
            Output("table", "fe55_gain", verdict="NUNTRUST"),
            Output("events", "fe55_events"),
            Output("plot", "fe55_plot", caption="fe55_gain.rst", category="Fe55 gain"),
        ),
        inputs=(Input("raw", "raw", ("ccd", "exposure"), obstype="fe55"),),
        script="fe55_gain",
        sections=("fe55", "fe55_gain"),
        shard="fe55",
        when="has_fe55",
        family="fe55",
    ),
    Stage(
        "photon_transfer",
        "ptc_sensor",
        outputs=(
            Output("table", "fe55_ptc"),
            Output("plot", "fe55_ptc_plot", caption="photon_transfer.rst", category="Fe55 gain"),
        ),
        inputs=(
            Input("flats", "raw", ("ccd",), obstype="sensor_flat"),
            Input("biases", "raw", ("ccd",), obstype="sensor_bias"),
        ),
        script="photon_transfer",
        sections=("fe55", "photon_transfer"),
        mem_mb=1000,
        runtime=10,
        shard="fe55",
        when="has_fe55",
        family="fe55",
    ),
    Stage(
        "fe55_summary",
        "sensor",
        outputs=(
            Output("summary", "fe55_summary", target=True, verdict="NUNTRUST"),
            Output("plot", "fe55_summary_plot", caption="fe55_summary.rst", category="Fe55 gain"),
        ),
        inputs=(
            Input("gains", "fe55_gain", ("ccd",)),
            Input("events", "fe55_events", ("ccd",)),
            Input("ptc", "fe55_ptc", ("ccd",)),
        ),
        script="fe55_summary",
        sections=("fe55_gain",),
        mem_mb=500,
        runtime=5,
        shard="fe55",
        when="has_fe55",
        family="fe55",
    ),
)
"""The pipeline's stages in workflow order (upstream first; plan rows follow it)."""

_BY_RULE = {s.rule: s for s in STAGES}


def stage(rule: str) -> Stage:
    """The stage of a rule.

    Raises
    ------
    KeyError
        If no stage has that rule name.
    """
    try:
        return _BY_RULE[rule]
    except KeyError:
        raise KeyError(
            f"no stage {rule!r} in the pipeline (stages: {', '.join(_BY_RULE)})"
        ) from None
