# The loopback DIRAC's components, as scripts/dirac-up starts them (sourced by dirac-up and
# dirac-restart, so a restarted component is started exactly as at first). Expects REPO and
# ME (the calling script's name, for messages) to be set.
RUN="${DCFLOW_RUN_DIR:-$REPO/run}/dirac"
N_PILOTS="${DCFLOW_DIRAC_PILOTS:-2}"
DB_PORT="${DCFLOW_DIRAC_DB_PORT:-13306}"
VENV="$RUN/server-venv"
PIDS="$RUN/pids"
LOGS="$RUN/logs"
CERTS="$RUN/certs"
PROXY="$RUN/proxy/user.pem"
USER_DN="/C=FR/O=dcflow/CN=dcflow-user"
HOST_DN="/C=FR/O=dcflow/CN=localhost"
CS_PORT=9135
SERVICE_PORTS=(9132 9130 9136 9170 9196 9175 9145 9171 9160 9172 9140 9152 9197 9148)
SERVICES=(
    WorkloadManagement/JobManager WorkloadManagement/JobMonitoring
    WorkloadManagement/JobStateUpdate WorkloadManagement/Matcher WorkloadManagement/SandboxStore
    WorkloadManagement/OptimizationMind WorkloadManagement/WMSAdministrator
    WorkloadManagement/PilotManager ResourceStatus/ResourceStatus
    ResourceStatus/ResourceManagement RequestManagement/ReqManager Framework/ProxyManager
    DataManagement/FileCatalog DataManagement/StorageElement
)

say() { echo "== $ME: $*"; }
die() {
    echo "== $ME: ERROR: $*" >&2
    exit 1
}

# A process we started is alive when its pid file's pid runs with the start time we recorded.
alive() {
    local file="$PIDS/$1.pid" pid start
    [ -f "$file" ] || return 1
    read -r pid start <"$file"
    [ -r "/proc/$pid/stat" ] || return 1
    [ "$(awk '{print $22}' "/proc/$pid/stat")" = "$start" ]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 name=$2 limit=${3:-60} i
    for ((i = 0; i < limit * 5; i++)); do
        port_open "$port" && return 0
        alive "$name" || die "$name exited; see $LOGS/$name.log"
        sleep 0.2
    done
    die "$name did not open port $port in ${limit}s; see $LOGS/$name.log"
}

# start NAME DIRAC_ROOT CMD...: run CMD in its own session (its pid is its process group id),
# with DIRAC's environment, and record the pid and its start time. DIRACSYSCONFIG is dropped:
# a caller that sourced env.sh (dirac-restart from benchmarks/chaos.py, an operator) would
# otherwise give the component the client's configuration (UseServerCertificate = no), and a
# restarted JobManager then calls OptimizationMind with the user's proxy, is refused, and new
# jobs wait in Received for the optimizers' 5-minute reload.
start() {
    local name=$1 root=$2
    shift 2
    if alive "$name"; then
        return 0
    fi
    mkdir -p "$root/work"
    (
        cd "$root/work"
        exec setsid env -u DIRACSYSCONFIG DCFLOW_DIRAC_LOOPBACK=1 DIRAC_ROOT_PATH="$root" X509_CERT_DIR="$CERTS/certificates" \
            X509_USER_PROXY="$PROXY" PATH="$VENV/bin:$PATH" "$@" >"$LOGS/$name.log" 2>&1 </dev/null
    ) &
    local pid=$!
    sleep 0.1
    echo "$pid $(awk '{print $22}' "/proc/$pid/stat")" >"$PIDS/$name.pid"
    say "started $name (pid $pid)"
}

# stop NAME: end the process group recorded for NAME (TERM, then KILL after 10 s).
stop() {
    local file="$PIDS/$1.pid" pid start
    if alive "$1"; then
        read -r pid start <"$file"
        say "stopping $1 (process group $pid)"
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 -- "-$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

# write_config: (re)write the configuration files (scripts/dirac/make_cfg.py; the master CS
# content is written once and kept).
write_config() {
    "$VENV/bin/python" "$REPO/scripts/dirac/make_cfg.py" "$RUN" "$N_PILOTS" "$DB_PORT" \
        "$(cat "$RUN/db-password")" "$USER_DN" "$HOST_DN"
}

# The DIRAC components after the database, in start order.
components() {
    echo cs services optimizers stalled
    seq -f 'pilot-%g' 0 $((N_PILOTS - 1))
}

# start_component NAME: start one DIRAC component and wait until it answers on its ports.
start_component() {
    local port
    case "$1" in
    cs)
        start cs "$RUN/server" dirac-service Configuration/Server
        wait_port "$CS_PORT" cs 60
        ;;
    services)
        start services "$RUN/server" dirac-service "${SERVICES[@]}"
        for port in "${SERVICE_PORTS[@]}"; do
            wait_port "$port" services 120
        done
        ;;
    optimizers) start optimizers "$RUN/server" dirac-executor WorkloadManagement/Optimizers ;;
    # Marks Stalled the Running jobs whose heartbeat stopped (their pilot died), as on a real
    # site; make_cfg.py sets the short watchdog cycle it counts in.
    stalled) start stalled "$RUN/server" dirac-agent WorkloadManagement/StalledJobAgent ;;
    pilot-*)
        start "$1" "$RUN/$1" "$REPO/scripts/dirac/pilot-loop" dirac-agent WorkloadManagement/JobAgent
        ;;
    *) die "no DIRAC component named '$1' (known: $(components | tr '\n' ' '))" ;;
    esac
}
