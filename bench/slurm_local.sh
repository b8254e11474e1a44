#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, FOR TESTS AND FOR TRYING `fastmlp sweep --slurm` AND JOB ARRAYS ONLY:
# it is not a configuration for a real cluster (no accounting, no cgroups, no limits on what a job uses beyond
# SLURM's own bookkeeping of cores and memory; it owns /etc/slurm/slurm.conf).
#
#     sudo bash bench/slurm_local.sh start     # install (Debian/Ubuntu: apt), configure, start, wait until idle
#     sudo bash bench/slurm_local.sh status    # sinfo of the partition
#     sudo bash bench/slurm_local.sh stop      # stop slurmd, slurmctld and munged
#
# start installs the Debian packages slurm-wlm and munge when sbatch or munged is missing, writes /etc/slurm/slurm.conf
# (one node, this machine's CPUs and memory as `slurmd -C` reports them; one partition, `local`, the default, with a
# one-day time limit), starts munged, slurmctld and slurmd as plain daemons (no systemd needed, so it works in a
# container) and waits, at most SLURM_LOCAL_WAIT_S seconds (default 60), until `sinfo` shows the node idle.  It
# refuses to replace a slurm.conf that it did not write.  Running it again while the cluster is up does nothing.
# The tests marked `slurm` (tests/test_slurm.py) use this cluster when `sinfo` answers; they never start it.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by fastmlp bench/slurm_local.sh: a one-node cluster for tests only"
PARTITION=local
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}
NODE=$(hostname -s)

die() { echo "slurm_local: $*" >&2; exit 1; }
say() { echo "slurm_local: $*" >&2; }

node_state() { sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1; }

install() {
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
            && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "sbatch or munged is missing and there is no apt-get: install SLURM and munge"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # the package lists may be missing or stale (a fresh container): update them once, only if the install fails
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; }
}

configure() {
    if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: not replacing it (move it away to use this script)"
    fi
    # the node as slurmd sees it (CPUs, sockets, cores, threads, RealMemory in MiB), under this host's short name
    local hw cpus mem
    hw=$(slurmd -C | head -n 1 | sed -e "s/^NodeName=[^ ]*/NodeName=$NODE/")
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read CPUs and RealMemory from 'slurmd -C': $hw"
    mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
    chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm
    cat >"$CONF" <<EOF
$MARK
ClusterName=fastmlp-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
MpiDefault=none
# no cgroups: a container or a VM without systemd has none to delegate
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets its cores' share, so that jobs of one core each run side by side
DefMemPerCPU=$((mem / cpus))
# scancel and time limits: SIGTERM, then SIGKILL 5 s later
KillWait=5
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$hw NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=1-00:00:00 State=UP
EOF
    say "wrote $CONF: node $NODE with $cpus CPUs and $mem MiB, partition $PARTITION"
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then                 # the package makes one; a purged and reinstalled one may not
        mkdir -p /etc/munge
        chown munge:munge /etc/munge
        chmod 0700 /etc/munge
        mungekey --create --force
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- munged
    munge -n </dev/null | unmunge >/dev/null || die "munged started but a credential does not decode"
}

start() {
    local t0=$SECONDS
    case "$(node_state)" in
        idle|mix|mixed|alloc|allocated) say "already running: $(sinfo -h -o '%P %D %t' | head -n 1)"; return ;;
    esac
    install
    configure
    start_munge
    pgrep -x slurmctld >/dev/null || slurmctld
    # slurmd registers with slurmctld when it starts: start it once the controller answers
    while ! scontrol ping 2>/dev/null | grep -q "is UP"; do
        [ $((SECONDS - t0)) -lt "$WAIT_S" ] \
            || die "slurmctld does not answer after $WAIT_S s; see /var/log/slurm/slurmctld.log"
        sleep 0.2
    done
    pgrep -x slurmd >/dev/null || slurmd
    local state=""
    while [ $((SECONDS - t0)) -lt "$WAIT_S" ]; do
        state=$(node_state)
        case "$state" in
            idle) say "node $NODE idle in partition $PARTITION after $((SECONDS - t0)) s"; return ;;
            down*|drain*|drng*|fail*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    die "the node is not idle after $WAIT_S s (state: ${state:-no answer}); see /var/log/slurm/slurmctld.log" \
        "and slurmd.log"
}

stop() {
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        scontrol shutdown 2>/dev/null || true           # slurmctld and every slurmd; running jobs are killed
        for _ in $(seq 20); do
            pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break
            sleep 0.5
        done
    fi
    local daemon pid
    for daemon in slurmd slurmctld; do                  # shutdown did not reach them (munged down, say)
        pid=$(cat "/run/$daemon.pid" 2>/dev/null || true)
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ -S /run/munge/munge.socket.2 ]; then
        munged --stop 2>/dev/null || true
    fi
    say "stopped"
}

status() {
    command -v sinfo >/dev/null || die "SLURM is not installed"
    sinfo -o '%P %a %l %D %c %m %t %N' || die "slurmctld does not answer"
}

root() { [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"; }
case "${1:-}" in
    start) root; start ;;
    stop) root; stop ;;
    status) status ;;
    *) die "usage: bash bench/slurm_local.sh start|stop|status" ;;
esac
