#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine: munged, slurmctld and slurmd, as root.
#
#   scripts/local-cluster.sh start    idempotent; returns when the node is idle (or fails)
#   scripts/local-cluster.sh stop     stops only the daemons this script started (by pid)
#   scripts/local-cluster.sh status   daemons, sinfo, and where the logs are
#
# The config is rendered from slurm/slurm.conf.template with this machine's hostname and
# the CPUs and memory that 'slurmd -C' reports. State, spool and logs live under
# $HPCTRAIN_CLUSTER_DIR (default: .cluster in the checkout). The rendered config is
# installed as /etc/slurm/slurm.conf only when that file is absent or was written by this
# script, so Slurm's client commands (and submitit) find it without SLURM_CONF; otherwise
# export SLURM_CONF=$HPCTRAIN_CLUSTER_DIR/slurm.conf.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
run=${HPCTRAIN_CLUSTER_DIR:-$here/.cluster}
conf=$run/slurm.conf
marker="# hpctrain local test cluster"
etc_conf=/etc/slurm/slurm.conf

say() { printf '[local-cluster] %s\n' "$*"; }
die() { printf '[local-cluster] error: %s\n' "$*" >&2; exit 1; }

pid_alive() {  # pidfile, expected command name
    [ -f "$1" ] || return 1
    local pid; pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q "$2" "/proc/$pid/comm" 2>/dev/null
}

render() {
    local host cpus mem
    host=$(hostname -s)
    read -r cpus mem < <(slurmd -C | awk '/^NodeName/ {for(i=1;i<=NF;i++){split($i,a,"="); if(a[1]=="CPUs")c=a[2]; if(a[1]=="RealMemory")m=a[2]} print c, m}')
    [ -n "$cpus" ] && [ -n "$mem" ] || die "'slurmd -C' did not report CPUs and RealMemory"
    mem=$(( mem * 95 / 100 ))  # leave slack: slurmd drains a node that reports less than configured
    sed -e "s|@HOST@|$host|g" -e "s|@RUN@|$run|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM@|$mem|g" \
        -e "s|@CTLD_PORT@|${HPCTRAIN_SLURMCTLD_PORT:-6817}|g" -e "s|@SLURMD_PORT@|${HPCTRAIN_SLURMD_PORT:-6818}|g" \
        "$here/slurm/slurm.conf.template" > "$conf.tmp"
    mv "$conf.tmp" "$conf"
    if [ ! -e "$etc_conf" ] || grep -q "^$marker" "$etc_conf"; then
        mkdir -p "$(dirname "$etc_conf")"
        cp "$conf" "$etc_conf"
    elif ! cmp -s "$conf" "$etc_conf"; then
        say "note: $etc_conf belongs to another Slurm; export SLURM_CONF=$conf to use this cluster"
    fi
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    [ -f /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then
        su -s /bin/sh munge -c munged 2>/dev/null || munged --force
    else
        munged --force
    fi
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munged did not start (see /var/log/munge/munged.log)"
    # munged run as the munge user cannot write into our run dir: record its pid here.
    # (munged forks into the background: take the live process, not the exited parent)
    ps -C munged -o pid=,stat= | awk '$2 !~ /Z/ {print $1}' | tail -n1 > "$run/munged.pid"
    [ -s "$run/munged.pid" ] || die "munged is not running after start"
    touch "$run/munged.ours"
}

start() {
    for b in slurmctld slurmd munged sinfo scontrol; do command -v "$b" >/dev/null || die "$b not found; run scripts/setup.sh (apt: slurm-wlm munge)"; done
    mkdir -p "$run/state" "$run/spool" "$run/log"
    render
    start_munge
    local t0=$SECONDS node
    node=$(hostname -s)
    pid_alive "$run/slurmctld.pid" slurmctld || slurmctld -f "$conf"
    pid_alive "$run/slurmd-$node.pid" slurmd || slurmd -f "$conf"
    local state=""
    for _ in $(seq 200); do
        state=$(SLURM_CONF=$conf sinfo -h -n "$node" -o %T 2>/dev/null | head -n1 || true)
        case "$state" in
            idle*|mixed*|allocated*) break ;;
            down*|drain*) SLURM_CONF=$conf scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.1
    done
    case "$state" in
        idle*|mixed*|allocated*) say "up in $((SECONDS - t0)) s: node $node is $state (config $conf, logs $run/log)" ;;
        *) tail -n 20 "$run/log/slurmctld.log" "$run/log/slurmd-$node.log" >&2 2>/dev/null || true
           die "node $node is '${state:-unknown}' after 20 s (logs above)" ;;
    esac
}

stop_one() {  # pidfile, name
    if pid_alive "$1" "$2"; then
        local pid; pid=$(cat "$1")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
        say "stopped $2 (pid $pid)"
    fi
    rm -f "$1"
}

stop() {
    local node; node=$(hostname -s)
    stop_one "$run/slurmd-$node.pid" slurmd
    stop_one "$run/slurmctld.pid" slurmctld
    if [ -f "$run/munged.ours" ]; then
        stop_one "$run/munged.pid" munged
        rm -f "$run/munged.ours"
    fi
}

status() {
    local node; node=$(hostname -s)
    pid_alive "$run/slurmctld.pid" slurmctld && say "slurmctld running (pid $(cat "$run/slurmctld.pid"))" || say "slurmctld not running"
    pid_alive "$run/slurmd-$node.pid" slurmd && say "slurmd running (pid $(cat "$run/slurmd-$node.pid"))" || say "slurmd not running"
    [ -f "$conf" ] && SLURM_CONF=$conf sinfo 2>&1 || true
    say "logs: $run/log"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
