"""Write the configuration of the project's loopback DIRAC (run by scripts/dirac-up).

Runs inside the DIRAC server venv (it needs ``diraccfg`` and the ConfigTemplate.cfg files
shipped in the DIRAC wheel). It writes, under the DIRAC run directory:

- ``server/etc/DCflow.cfg``: the master Configuration Service content (Registry, Resources,
  Operations, Systems), built from DIRAC's own templates plus the overrides below;
- ``server/etc/dirac.cfg``: the local configuration of the server processes;
- ``client/etc/dirac.cfg``: what clients (the executor plugin, the tests) load;
- ``pilot-<n>/etc/dirac.cfg``: one DIRAC root per private-pilot JobAgent (they rewrite it).

Every URL points at localhost: the services are for this machine only.

Usage: make_cfg.py RUN_DIR N_PILOTS DB_PORT DB_PASSWORD USER_DN HOST_DN
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import DIRAC
from diraccfg import CFG

__all__ = ["main"]

CONFIG_NAME = "DCflow"
VO = "dcflow"
USER = "dcflow"
USER_GROUP = "dcflow_user"
ADMIN_GROUP = "dcflow_admin"
SITE = "DCFLOW.Loopback.local"
CE = "localhost"
QUEUE = "default"
SANDBOX_SE = "SandboxSE"
DATA_SE = "DCFLOW-SE"
CS_PORT = 9135
WATCHDOG_CYCLE_S = 20
"""Seconds between a running job's heartbeats (the JobWrapper's watchdog checks; DIRAC's
default and minimum are 30 and 20 minutes, for jobs of hours). The StalledJobAgent counts in
these cycles: a Running job without a heartbeat for 2.5 cycles (50 s) turns Stalled."""
STALLED_AFTER_CYCLES = 2

# (system, service) -> DISET port; the ports are DIRAC's template defaults.
SERVICES = {
    ("WorkloadManagement", "JobManager"): 9132,
    ("WorkloadManagement", "JobMonitoring"): 9130,
    ("WorkloadManagement", "JobStateUpdate"): 9136,
    ("WorkloadManagement", "Matcher"): 9170,
    ("WorkloadManagement", "SandboxStore"): 9196,
    ("WorkloadManagement", "OptimizationMind"): 9175,
    ("WorkloadManagement", "WMSAdministrator"): 9145,
    ("WorkloadManagement", "PilotManager"): 9171,
    ("ResourceStatus", "ResourceStatus"): 9160,
    ("ResourceStatus", "ResourceManagement"): 9172,
    ("RequestManagement", "ReqManager"): 9140,
    ("Framework", "ProxyManager"): 9152,
    ("DataManagement", "FileCatalog"): 9197,
    ("DataManagement", "StorageElement"): 9148,
}
DATABASES = {
    "WorkloadManagement": [
        "JobDB",
        "JobLoggingDB",
        "TaskQueueDB",
        "SandboxMetadataDB",
        "PilotAgentsDB",
    ],
    "ResourceStatus": ["ResourceStatusDB", "ResourceManagementDB"],
    "RequestManagement": ["ReqDB"],
    "Framework": ["ProxyDB"],
    "DataManagement": ["FileCatalogDB"],
}


def _template(system: str) -> CFG:
    path = Path(DIRAC.__file__).parent / f"{system}System" / "ConfigTemplate.cfg"
    return CFG().loadFromFile(str(path))


def _cfg(text: str) -> CFG:
    return CFG().loadFromBuffer(text)


def _parents(cfg: CFG, path: str) -> None:
    parts = path.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        if not cfg.isSection(prefix):
            cfg.createNewSection(prefix)


def _section(cfg: CFG, path: str, contents: CFG) -> None:
    """Put ``contents`` at ``path`` (a/b/c), creating the parent sections."""
    _parents(cfg, path)
    cfg.createNewSection(path, contents=contents)


def _option(cfg: CFG, path: str, value: str) -> None:
    """Set the option at ``path`` (a/b/c), creating the parent sections."""
    _parents(cfg, path)
    cfg.setOption(path, value)


def _systems(run_dir: Path, db_port: int, db_password: str) -> CFG:
    """Services, URLs, databases, executors and agents, from DIRAC's templates."""
    systems = CFG()
    db_defaults = (
        f"Databases\n{{\nUser = Dirac\nPassword = {db_password}\nHost = 127.0.0.1\n"
        f"Port = {db_port}\n}}\n"
    )
    systems = systems.mergeWith(_cfg(db_defaults))
    # No OpenSearch here (not packaged for Debian or PyPI): JobParametersDB must still find a
    # configuration, or the WMS handlers do not start. Port 1 on loopback refuses at once, so
    # those calls answer "not connected" (the executor does not use them).
    systems = systems.mergeWith(
        _cfg(
            "NoSQLDatabases\n{\nHost = 127.0.0.1\nPort = 1\nUser = none\nPassword = none\n"
            "SSL = No\n}\n"
        )
    )
    for (system, service), port in SERVICES.items():
        template = _template(system)
        section = template.getAsCFG(f"Services/{service}")
        overrides = f"Port = {port}\nProtocol = dips\n"
        if service == "SandboxStore":
            overrides += f"LocalSE = {SANDBOX_SE}\nBasePath = {run_dir}/storage/sandboxes\n"
        if service == "StorageElement":
            overrides += f"BasePath = {run_dir}/storage/se\n"
        section = section.mergeWith(_cfg(overrides))
        _section(systems, f"{system}/Services/{service}", contents=section)
        _option(systems, f"{system}/URLs/{service}", f"dips://localhost:{port}/{system}/{service}")
    for system, names in DATABASES.items():
        for name in names:
            _section(
                systems,
                f"{system}/Databases/{name}",
                contents=_cfg(
                    f"DBName = {name}\nHost = 127.0.0.1\nPort = {db_port}\nUser = Dirac\n"
                    f"Password = {db_password}\n"
                ),
            )
    wms = _template("WorkloadManagement")
    _section(systems, "WorkloadManagement/Executors", contents=wms.getAsCFG("Executors"))
    _section(
        systems,
        "WorkloadManagement/JobWrapper",
        contents=wms.getAsCFG("JobWrapper").mergeWith(_cfg(_watchdog_cycle())),
    )
    # StalledTimeHours is a number of watchdog cycles despite its name (plus half a cycle).
    stalled = wms.getAsCFG("Agents/StalledJobAgent").mergeWith(
        _cfg(
            f"PollingTime = 10\nStalledTimeHours = {STALLED_AFTER_CYCLES}\nMaxNumberOfThreads = 2\n"
        )
    )
    _section(systems, "WorkloadManagement/Agents/StalledJobAgent", contents=stalled)
    agent = wms.getAsCFG("Agents/JobAgent").mergeWith(
        _cfg(
            "PollingTime = 1\nStopAfterFailedMatches = 3\nSubmissionDelay = 0\n"
            "StopOnApplicationFailure = False\nFillingModeFlag = True\nMinimumTimeLeft = 0\n"
            "CEType = InProcess\n"
        )
    )
    _section(systems, "WorkloadManagement/Agents/JobAgent", contents=agent)
    _section(
        systems,
        "Configuration/Services/Server",
        contents=_template("Configuration")
        .getAsCFG("Services/Server")
        .mergeWith(
            _cfg(
                f"Port = {CS_PORT}\nProtocol = dips\n"
                "HandlerPath = DIRAC/ConfigurationSystem/Service/ConfigurationHandler.py\n"
            )
        ),
    )
    return systems


def _watchdog_cycle() -> str:
    """The JobWrapper options that set the heartbeat period (see WATCHDOG_CYCLE_S)."""
    return f"CheckingTime = {WATCHDOG_CYCLE_S}\nMinCheckingTime = {WATCHDOG_CYCLE_S}\n"


def _master(run_dir: Path, db_port: int, db_password: str, user_dn: str, host_dn: str) -> CFG:
    """Registry, Resources, Operations and Systems: the content the CS serves."""
    text = f"""
DIRAC
{{
  VirtualOrganization = {VO}
}}
DiracX
{{
  DisabledVOs = {VO}
}}
Registry
{{
  DefaultGroup = {USER_GROUP}
  DefaultProxyLifeTime = 86400
  Users
  {{
    {USER}
    {{
      DN = {user_dn}
      Email = {USER}@localhost
    }}
  }}
  Hosts
  {{
    localhost
    {{
      DN = {host_dn}
      Properties = TrustedHost, CSAdministrator, JobAdministrator, FullDelegation
      Properties += ProxyManagement, Operator, ServiceAdministrator, SiteManager
      Properties += ProductionManagement
    }}
  }}
  Groups
  {{
    {USER_GROUP}
    {{
      Users = {USER}
      Properties = NormalUser
      VO = {VO}
    }}
    {ADMIN_GROUP}
    {{
      Users = {USER}
      Properties = NormalUser, ServiceAdministrator, CSAdministrator, JobAdministrator
      Properties += Operator, FullDelegation, ProxyManagement, SiteManager
      VO = {VO}
    }}
  }}
  VO
  {{
    {VO}
    {{
      VOAdmin = {USER}
      VOAdminGroup = {ADMIN_GROUP}
    }}
  }}
}}
Resources
{{
  Sites
  {{
    DCFLOW
    {{
      {SITE}
      {{
        Name = {SITE}
        CE = {CE}
        SE = {DATA_SE}
        CEs
        {{
          {CE}
          {{
            CEType = InProcess
            Queues
            {{
              {QUEUE}
              {{
                maxCPUTime = 1000000
              }}
            }}
          }}
        }}
      }}
    }}
  }}
  StorageElements
  {{
    {SANDBOX_SE}
    {{
      BackendType = DISET
      AccessProtocols = dips
      DIP
      {{
        Host = localhost
        Port = {SERVICES[("WorkloadManagement", "SandboxStore")]}
        PluginName = DIP
        Protocol = dips
        Path = /WorkloadManagement/SandboxStore
        Access = remote
      }}
    }}
    {DATA_SE}
    {{
      BackendType = DISET
      AccessProtocols = dips
      DIP
      {{
        Host = localhost
        Port = {SERVICES[("DataManagement", "StorageElement")]}
        PluginName = DIP
        Protocol = dips
        Path = /DataManagement/StorageElement
        Access = remote
      }}
    }}
  }}
  FileCatalogs
  {{
    FileCatalog
    {{
      AccessType = Read-Write
      Status = Active
      Master = True
    }}
  }}
}}
Operations
{{
  Defaults
  {{
    ResourceStatus
    {{
      Config
      {{
        Cache = 3600
        State = Active
      }}
    }}
    Services
    {{
      Catalogs
      {{
        CatalogList = FileCatalog
      }}
    }}
    InputDataPolicy
    {{
      Default = DIRAC.WorkloadManagementSystem.Client.InputDataResolution
    }}
  }}
}}
"""
    master = _cfg(text)
    _section(master, "Systems", contents=_systems(run_dir, db_port, db_password))
    return master


def _dirac_section(extra: str) -> str:
    return f"""
DIRAC
{{
  VirtualOrganization = {VO}
  Configuration
  {{
    Servers = dips://localhost:{CS_PORT}/Configuration/Server
{extra}
  }}
  Security
  {{
    UseServerCertificate = {{use_server}}
  }}
}}
DiracX
{{
  DisabledVOs = {VO}
}}
"""


def main(argv: list[str]) -> int:
    """Write every configuration file; see the module docstring for the arguments."""
    run_dir = Path(argv[0]).resolve()
    n_pilots = int(argv[1])
    db_port = int(argv[2])
    db_password, user_dn, host_dn = argv[3], argv[4], argv[5]
    certs = run_dir / "certs"

    server_etc = run_dir / "server" / "etc"
    server_etc.mkdir(parents=True, exist_ok=True)
    master_file = server_etc / f"{CONFIG_NAME}.cfg"
    if not master_file.exists():
        # The CS rewrites this file (version stamps): written once, kept afterwards.
        master = _master(run_dir, db_port, db_password, user_dn, host_dn)
        _option(master, "DIRAC/Configuration/Name", CONFIG_NAME)
        master_file.write_text(str(master))

    server = _cfg(
        _dirac_section(f"    Master = yes\n    Name = {CONFIG_NAME}").replace("{use_server}", "yes")
    )
    _option(server, "DIRAC/Security/CertFile", str(certs / "hostcert.pem"))
    _option(server, "DIRAC/Security/KeyFile", str(certs / "hostkey.pem"))
    _option(server, "DIRAC/Security/CALocation", str(certs / "certificates"))
    _section(server, "Systems", contents=_systems(run_dir, db_port, db_password))
    _option(server, "LocalSite/Site", SITE)
    (server_etc / "dirac.cfg").write_text(str(server))

    client_etc = run_dir / "client" / "etc"
    client_etc.mkdir(parents=True, exist_ok=True)
    client = _cfg(_dirac_section("").replace("{use_server}", "no"))
    _option(client, "DIRAC/Security/CALocation", str(certs / "certificates"))
    (client_etc / "dirac.cfg").write_text(str(client))

    cores = os.cpu_count() or 1
    ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    for index in range(n_pilots):
        pilot_etc = run_dir / f"pilot-{index}" / "etc"
        pilot_etc.mkdir(parents=True, exist_ok=True)
        pilot = client.clone()
        _section(
            pilot,
            "LocalSite",
            contents=_cfg(
                f"Site = {SITE}\nGridCE = {CE}\nCEQueue = {QUEUE}\nLocalCE = InProcess\n"
                f"CPUTimeLeft = 1000000000\nCPUNormalizationFactor = 1.0\n"
                f"PilotReference = dcflow-pilot-{index}\n"
                f"NumberOfProcessors = {cores}\nMaxRAM = {ram_mb}\n"
            ),
        )
        # The InProcess CE reports 1 processor until its first job; the JobAgent merges
        # /AgentJobRequirements into what it asks the Matcher for, so every pilot offers all
        # the machine's cores from the start (multi-processor jobs match). Its values reach the
        # Matcher as strings: MaxRAM there fails the TaskQueue check, so it is not set.
        _section(
            pilot,
            "AgentJobRequirements",
            _cfg(f"NumberOfProcessors = {cores}\n"),
        )
        # The pilots' watchdogs read it locally: the master CS is written once, so a running
        # DIRAC picks a new period up with `scripts/dirac-restart --config pilot-<n>`.
        _section(pilot, "Systems/WorkloadManagement/JobWrapper", _cfg(_watchdog_cycle()))
        (pilot_etc / "dirac.cfg").write_text(str(pilot))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
