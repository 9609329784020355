"""Unit tests of the DIRAC executor plugin: parsers on recorded DIRAC answers, names, quoting,
resource mapping, settings. No DIRAC service needed; the JDL tests need the DIRAC client."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from snakemake_interface_common.exceptions import WorkflowError

from dcflow.states import JobState
from snakemake_executor_plugin_dirac import ExecutorSettings
from snakemake_executor_plugin_dirac.jobs import split_list
from snakemake_executor_plugin_dirac.status import (
    ALIVE_STATES,
    KILL_MINOR_STATUS,
    STATE_MAP,
    JobOutcome,
    adoptable_jobs,
    describe_failure,
    done_on_disk,
    parse_states,
)
from snakemake_executor_plugin_dirac.submit import (
    DEFAULT_CPU_TIME_S,
    MAX_GROUP_CHARS,
    MAX_NAME_CHARS,
    DiracJobSpec,
    arguments_string,
    cpu_time_s,
    job_group,
    job_name,
    job_script,
    make_dirac_job,
    output_digest,
    parametric_chunks,
)

RECORDED = json.loads((Path(__file__).parent / "dirac" / "getJobsStates.json").read_text())


# ---- states, on answers recorded from the project's DIRAC 9.1.22 ------------------------------


def test_parse_recorded_states_while_a_job_runs():
    outcomes = parse_states(RECORDED["while_running"])
    assert {k: o.state for k, o in outcomes.items()} == {
        "1": JobState.SUCCEEDED,
        "3": JobState.SUCCEEDED,
        "5": JobState.FAILED,
        "9": JobState.RUNNING,
        "10": JobState.SUBMITTED,
        "11": JobState.CANCELLED,
    }
    assert outcomes["5"].application_status == "sh Exited With Status 3"
    assert outcomes["5"].minor_status == "Application Finished With Errors"
    assert [k for k, o in outcomes.items() if o.finished] == ["1", "11", "3", "5"]


def test_parse_recorded_states_after_kill_and_unknown_id():
    outcomes = parse_states(RECORDED["after_kill"])
    assert outcomes["9"].state is JobState.CANCELLED
    assert outcomes["9"].minor_status == "Marked for termination"
    assert outcomes["10"].state is JobState.RUNNING
    # the id 999999 was asked for and DIRAC left it out: absent, so the executor yields it again
    assert "999999" not in outcomes


def test_parse_states_int_keys_and_unknown_status():
    outcomes = parse_states({42: {"Status": "SomethingNew", "MinorStatus": None}})
    assert outcomes["42"] == JobOutcome("42", JobState.SUBMITTED, "SomethingNew", "", "")
    assert not outcomes["42"].finished


def test_state_map_failures_and_alive_states():
    failures = {s for s, js in STATE_MAP.items() if js in (JobState.FAILED, JobState.CANCELLED)}
    assert failures == {"Failed", "Stalled", "Killed", "Deleted"}
    assert {s for s, js in STATE_MAP.items() if js is JobState.SUCCEEDED} == {"Done"}
    assert set(ALIVE_STATES) == {
        "Submitting", "Received", "Checking", "Staging", "Waiting", "Matched",
        "Rescheduled", "Running", "Completing", "Completed",
    }  # fmt: skip


def test_killed_jobs_are_never_adopted():
    # the status sequence of a job killed while running, measured on the test DIRAC
    def one(status, minor):
        return {"JobName": "slow~1", "Status": status, "MinorStatus": minor}

    assert adoptable_jobs({"7": one("Running", "Application")}) == {"slow~1": "7"}
    assert adoptable_jobs({8: one("Waiting", "Pilot Agent Submission")}) == {"slow~1": "8"}
    for status in ("Killed", "Running", "Failed"):
        assert adoptable_jobs({"7": one(status, KILL_MINOR_STATUS)}) == {}
    assert adoptable_jobs({"7": one("Done", "Execution Complete")}) == {}


def test_describe_failure_names_statuses_and_log():
    outcome = parse_states(RECORDED["after_kill"])["5"]
    msg = describe_failure(outcome, "--- job.log ---\nboom", "/x/5")
    assert "DIRAC job 5 Failed" in msg
    assert "'Application Finished With Errors'" in msg
    assert "'sh Exited With Status 3'" in msg
    assert msg.endswith("boom")
    assert "No job log came back" in describe_failure(outcome, "", None)


# ---- names, groups, quoting, resources ---------------------------------------------------------


def test_job_name_is_sanitised_bounded_and_ends_with_output_digest():
    name = job_name("calexp", {"visit": "123", "ccd": "7"}, ["b.fits", "a.fits"])
    assert name == f"calexp.visit=123.ccd=7~{output_digest(['a.fits', 'b.fits'])}"
    assert len(output_digest(["x"])) == 10
    odd = job_name("r", {"p": "a/b;c'd\"e f,g{h}"}, ["o"])
    assert odd.startswith("r.p=a_b_c_d_e_f_g_h_~")
    long = job_name("r", {"w": "x" * 500}, ["o"])
    assert len(long) == MAX_NAME_CHARS and long.endswith("~" + output_digest(["o"]))
    assert job_name("all", {}, ["o"]).startswith("all~")


def test_job_group_depends_on_workdir_and_checks_prefix(tmp_path):
    group = job_group(tmp_path, "camp")
    assert group == job_group(str(tmp_path), "camp") and group.startswith("camp-")
    assert len(group) == len("camp-") + 8 <= MAX_GROUP_CHARS
    assert job_group(tmp_path / "other", "camp") != group
    assert len(job_group(tmp_path, "p" * 23)) == MAX_GROUP_CHARS
    with pytest.raises(WorkflowError, match=r"--dirac-job-group-prefix must be .* not 'a b'"):
        job_group(tmp_path, "a b")
    with pytest.raises(WorkflowError, match=r"not 'p{24}'"):
        job_group(tmp_path, "p" * 24)


@pytest.mark.parametrize("bad", ["a;b", 'say"hi"', "it's", "50%", "a b", "$HOME", "x`y`"])
def test_arguments_refuse_what_breaks_the_jdl(bad):
    with pytest.raises(WorkflowError, match=r"DIRAC job argument .* has a character outside"):
        arguments_string(["/bin/ok", bad])


def test_arguments_round_trip_through_shlex():
    args = ["/site/run/.snakemake/tmp.x1/snakejob.a.1.sh", "k=v,w", "user@host:9"]
    assert shlex.split(arguments_string(args)) == args


def test_cpu_time_from_runtime_and_threads():
    assert cpu_time_s(10, 1) == 600
    assert cpu_time_s(10, 4) == 2400
    assert cpu_time_s(0.5, 1) == 60  # floor of one minute
    assert cpu_time_s(None, 2) == 2 * DEFAULT_CPU_TIME_S
    assert cpu_time_s("1h", 1) == DEFAULT_CPU_TIME_S  # unparsed strings fall back


def test_parametric_chunks_cover_all_jobs_once():
    chunks = parametric_chunks(250, 100)
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert [i for c in chunks for i in c] == list(range(250))
    assert parametric_chunks(0, 100) == []
    assert [len(c) for c in parametric_chunks(3, 0)] == [1, 1, 1]


def test_split_list():
    assert split_list(" A, B,,C ") == ("A", "B", "C")
    assert split_list(None) == ()


def test_job_script_quotes_workdir_and_restores_path():
    text = job_script('{"rule": "a"}', "python -m snakemake --x", "/w/my dir", "/v/bin:/usr/bin")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "cd '/w/my dir' || exit 97" in lines
    assert "PATH=/v/bin:/usr/bin" in lines
    assert lines[-1] == "python -m snakemake --x"


def test_settings_validation():
    assert ExecutorSettings().parametric_min_jobs == 2
    with pytest.raises(WorkflowError, match="--dirac-max-parametric-jobs must be >= 1, not 0"):
        ExecutorSettings(max_parametric_jobs=0)
    with pytest.raises(WorkflowError, match="--dirac-parametric-min-jobs must be >= 0, not -1"):
        ExecutorSettings(parametric_min_jobs=-1)
    with pytest.raises(WorkflowError, match="--dirac-job-group-prefix"):
        ExecutorSettings(job_group_prefix="bad;prefix")


# ---- JDL built by the DIRAC client (no server needed) -----------------------------------------


def _jdl(job) -> str:
    """The job's JDL with DIRAC's optional double quotes around values removed."""
    return job._toJDL().replace('"', "")


def test_jdl_carries_resources_and_placement():
    pytest.importorskip("DIRAC", reason="the DIRAC client is not installed (install-dirac-client)")
    spec = DiracJobSpec(
        name="calexp.visit=1~0123456789",
        group="smk-abcdef12",
        arguments=("/w/.snakemake/tmp.a/snakejob.calexp.3.sh",),
        cpu_time_s=1200,
        processors=2,
        max_ram_mb=3000,
        banned_sites=("LCG.Bad.fr",),
        tags=("GPU",),
    )
    job = make_dirac_job(spec)
    jdl = _jdl(job)
    assert "JobName = calexp.visit=1~0123456789;" in jdl
    assert "JobGroup = smk-abcdef12;" in jdl
    assert "CPUTime = 1200;" in jdl
    assert "NumberOfProcessors = 2;" in jdl
    assert "MaxRAM = 3000;" in jdl
    assert "BannedSites = LCG.Bad.fr;" in jdl
    assert "Tags = GPU;" in jdl
    # a single job's arguments travel in the workflow XML (its input sandbox), not the JDL
    assert "/w/.snakemake/tmp.a/snakejob.calexp.3.sh" in job.workflow.toXML()


def test_jdl_parametric_has_one_parameter_per_job():
    pytest.importorskip("DIRAC", reason="the DIRAC client is not installed (install-dirac-client)")
    spec = DiracJobSpec("r~x", "smk-1", (), 600, 1, None)
    scripts = ["/w/a.sh", "/w/b.sh", "/w/c.sh"]
    names = [job_name("r", {"filter": f, "ccd": 1}, [f]) for f in "gri"]
    job = make_dirac_job(spec, scripts=scripts, names=names)
    from DIRAC.Core.Utilities.ClassAd.ClassAdLight import ClassAd

    # DIRAC's own JDL parser sees one name per job (a comma in a name would split it)
    assert ClassAd("[" + job._toJDL() + "]").getListFromExpression("Parameters.name") == names
    jdl = _jdl(job)
    assert "Parameters = 3;" in jdl
    assert "JobName = %(name)s;" in jdl
    assert "arguments='%(script)s'" in jdl
    assert all(s in jdl for s in scripts)
    with pytest.raises(WorkflowError, match="has a character outside"):
        make_dirac_job(spec, scripts=["/w/a;rm.sh"], names=["x"])


# ---- DIRAC call results -------------------------------------------------------------------------


def test_connection_failures_are_retried_other_errors_raised(monkeypatch):
    from snakemake_executor_plugin_dirac import wms

    monkeypatch.setattr(wms.time, "sleep", lambda s: None)
    answers = iter(
        [{"OK": False, "Message": "Can't connect to dips://localhost:9130/x: reset"}] * 2
        + [{"OK": True, "Value": [7]}]
    )
    assert wms._value(lambda: next(answers), "getJobs", "g") == [7]
    calls = []

    def refused():
        calls.append(1)
        return {"OK": False, "Message": "Job 5 not found"}

    with pytest.raises(wms.DiracError, match=r"DIRAC killJob\(\[5\]\) failed: Job 5 not found"):
        wms._value(refused, "killJob", [5])
    assert len(calls) == 1
    down = {"OK": False, "Message": "Can't connect to dips://localhost:9130/x"}
    with pytest.raises(wms.DiracError, match="Can't connect"):
        wms._value(lambda: down, "getJobsStates", [1])


# ---- jobs done on disk that DIRAC would run again -----------------------------------------------


def _outputs(workdir: Path) -> list[str]:
    """A job's two outputs, written as dcflow writes them: a FITS file and a text file."""
    import numpy as np
    from astropy.io import fits

    from dcflow.io import write_fits, write_text

    write_fits(fits.HDUList([fits.PrimaryHDU(np.arange(720.0))]), workdir / "out" / "a.fits")
    write_text("placeholder\n", workdir / "out" / "b.txt")
    return ["out/a.fits", "out/b.txt"]


def test_done_on_disk_needs_every_output_whole(tmp_path):
    outputs = _outputs(tmp_path)
    assert done_on_disk(tmp_path, outputs)
    assert done_on_disk(tmp_path, [str(tmp_path / o) for o in outputs])
    assert not done_on_disk(tmp_path, [*outputs, "out/missing.txt"])
    assert not done_on_disk(tmp_path, [])
    damaged = bytearray((tmp_path / outputs[0]).read_bytes())
    damaged[2880 + 100] ^= 0x40  # one data bit: DATASUM disagrees
    (tmp_path / outputs[0]).write_bytes(bytes(damaged))
    assert not done_on_disk(tmp_path, outputs)


def test_rescheduled_job_done_on_disk_is_reported_done_and_killed(tmp_path, monkeypatch):
    """DIRAC reschedules a job whose output upload failed after a good payload: the executor
    reports it done from its whole outputs and kills it, so DIRAC never runs it again. A
    queued job never rescheduled (whole outputs from an attempt killed while running), a
    killed one, or one without its outputs, is not taken as done."""
    import asyncio
    import types

    import snakemake_executor_plugin_dirac as plugin
    from snakemake_executor_plugin_dirac import Executor

    done = _outputs(tmp_path)
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  = T" + b" " * 100)  # no END: not readable
    jobs = {  # id: (outcome, outputs, RescheduleCounter)
        "1": (JobOutcome("1", JobState.SUBMITTED, "Waiting", "Pilot Agent Submission"), done, 1),
        "2": (JobOutcome("2", JobState.SUBMITTED, "Rescheduled", "Job Rescheduled"), ["x"], 1),
        "3": (JobOutcome("3", JobState.FAILED, "Failed", "Uploading"), ["bad.fits"], 0),
        "4": (JobOutcome("4", JobState.RUNNING, "Running", "Application"), done, 1),
        "5": (JobOutcome("5", JobState.SUBMITTED, "Waiting", "Pilot Agent Submission"), done, 0),
        "6": (JobOutcome("6", JobState.CANCELLED, "Killed", KILL_MINOR_STATUS), done, 0),
    }
    seen = {"success": [], "error": [], "killed": [], "counts asked": []}

    def reschedule_counts(ids):
        seen["counts asked"].extend(ids)
        return {i: jobs[i][2] for i in ids}

    class Limiter:
        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

    fake = types.SimpleNamespace(
        workdir=tmp_path,
        ended_dir=tmp_path / ".snakemake" / "dirac_ended",
        status_rate_limiter=Limiter(),
        wms=types.SimpleNamespace(
            states=lambda ids: {i: jobs[i][0] for i in ids},
            reschedule_counts=reschedule_counts,
            kill=lambda ids: seen["killed"].extend(ids),
        ),
        logger=types.SimpleNamespace(info=lambda m: None, warning=lambda m: None),
        report_job_success=lambda info: seen["success"].append(info.external_jobid),
        report_job_error=lambda info, **kw: seen["error"].append(info.external_jobid),
    )
    for name in ("mark_ended", "rescheduled_done_on_disk", "settle_done_on_disk", "kill_quietly"):
        setattr(fake, name, types.MethodType(getattr(Executor, name), fake))  # the real ones
    infos = [
        types.SimpleNamespace(external_jobid=i, job=types.SimpleNamespace(output=o))
        for i, (_, o, _) in jobs.items()
    ]

    async def poll():
        return [i.external_jobid async for i in Executor.check_active_jobs(fake, infos)]

    monkeypatch.setattr(plugin, "tail_of_logs", lambda executor, job_id: (None, ""))
    still_active = asyncio.run(poll())
    assert still_active == ["2", "4", "5"]
    assert seen == {
        "success": ["1"],
        "error": ["3", "6"],
        "killed": ["1"],
        "counts asked": ["1", "5"],
    }
    assert sorted(p.name for p in fake.ended_dir.iterdir()) == ["1", "3", "6"]
