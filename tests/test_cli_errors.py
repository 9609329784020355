"""Errors the user can fix exit with their `CampaignError` code and one line; bugs do not.

Each case runs a verb through `dcflow.cli.main` and asserts the exit code and the message
(``dcflow <verb>: ...`` on stderr); a KeyError inside a verb must stay a traceback, never the
usage exit 2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dcflow import cli
from dcflow.errors import (
    BackendUnreachableError,
    CampaignError,
    CancelTimeoutError,
    ConfigInvalidError,
    ConfigMissingError,
    DriverBusyError,
    InputMissingError,
    LedgerUnreadableError,
    ProfileUnknownError,
)

VALID = "campaign: {name: c, instrument: cfht_sim}\nlayout: {output_root: out}\n"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def campaign(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(VALID)
    return tmp_path / "c.yaml"


def test_exit_codes_of_the_error_classes():
    codes = {
        ConfigInvalidError: 2,
        ConfigMissingError: 2,
        ProfileUnknownError: 2,
        InputMissingError: 1,
        LedgerUnreadableError: 1,
        BackendUnreachableError: 4,
        CancelTimeoutError: 1,
        DriverBusyError: 1,
    }
    for cls, code in codes.items():
        assert issubclass(cls, CampaignError) and cls("x").exit_code == code, cls
    assert not issubclass(KeyError, CampaignError)


def test_missing_config_file_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nowhere.yaml"
    code, _, err = _run(capsys, "status", "--config", str(missing))
    assert code == 2
    assert err.strip() == f"dcflow status: {missing}: no such campaign config"


def test_config_breaking_the_schema_exits_2_naming_the_key(campaign, capsys):
    campaign.write_text(VALID.replace("instrument: cfht_sim", "instrument: cfht_sim, nmae: x"))
    code, _, err = _run(capsys, "cancel", "--config", str(campaign))
    assert code == 2
    assert err.startswith(f"dcflow cancel: {campaign}: invalid config at campaign: ")
    assert "'nmae' was unexpected" in err


def test_config_that_is_not_yaml_exits_2(campaign, capsys):
    campaign.write_text("campaign: [name: c\n")
    code, _, err = _run(capsys, "cancel", "--config", str(campaign))
    assert code == 2 and err.startswith(f"dcflow cancel: {campaign}: not valid YAML")


def test_unknown_profile_exits_2_naming_it(campaign, capsys):
    code, _, err = _run(capsys, "ping", "--profile", "no-such-profile")
    assert code == 2
    assert err.strip() == (
        "dcflow ping: profile 'no-such-profile': no such directory (nor under profiles/)"
    )
    # run checks the profile before it opens a ledger or starts Snakemake
    code, _, err = _run(capsys, "run", "--config", str(campaign), "--profile", "nope")
    assert code == 2 and "dcflow run: profile 'nope': no such directory" in err
    assert not (campaign.parent / "out" / "ledger.sqlite3").exists()


def test_missing_registry_exits_1_saying_to_ingest(campaign, capsys):
    code, _, err = _run(capsys, "status", "--config", str(campaign))
    assert code == 1
    assert err.startswith("dcflow status: ")
    assert "registry.sqlite3: no campaign registry (run `dcflow ingest` first)" in err


def test_unreadable_ledger_exits_1_naming_it(campaign, capsys):
    ledger = campaign.parent / "out" / "ledger.sqlite3"
    ledger.parent.mkdir()
    ledger.write_bytes(b"not an SQLite file, " * 100)
    code, _, err = _run(capsys, "cancel", "--config", str(campaign))
    assert code == 1
    assert err.strip() == (
        f"dcflow cancel: {ledger}: run ledger unreadable: file is not a database"
    )


def test_ledger_that_cannot_be_created_exits_1(campaign, capsys):
    (campaign.parent / "out").write_text("a file where the output root should be")
    code, _, err = _run(capsys, "cancel", "--config", str(campaign))
    ledger = campaign.parent / "out" / "ledger.sqlite3"
    assert code == 1 and err.startswith(f"dcflow cancel: {ledger}: run ledger unreadable: ")


def test_unreachable_backend_exits_4(tmp_path, capsys):
    profile = tmp_path / "prof"
    profile.mkdir()
    (profile / "config.yaml").write_text("executor: nowhere\n")
    code, out, err = _run(capsys, "ping", "--profile", str(profile))
    assert code == 4
    assert "FAIL nowhere backend: no check known for 'nowhere'" in out
    assert err.strip() == (
        "dcflow ping: nowhere does not take jobs (backend: no check known for 'nowhere')"
    )


def test_internal_keyerror_is_a_traceback_not_usage(campaign, monkeypatch):
    def broken(*args, **kwargs):
        return {}["boom"]

    monkeypatch.setattr(cli, "status_campaign", broken)
    with pytest.raises(KeyError, match="boom"):
        cli.main(["status", "--config", str(campaign)])
    # through a fresh interpreter: Python's own exit 1 with the traceback, nothing caught
    code = (
        "import sys; from dcflow import cli\n"
        "cli.VERBS['status'] = lambda args, extra: {}['boom']\n"
        "sys.exit(cli.main(['status', '--config', 'c.yaml']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=campaign.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "KeyError: 'boom'" in proc.stderr
    assert "dcflow status:" not in proc.stderr
