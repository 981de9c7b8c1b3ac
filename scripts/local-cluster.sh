#!/usr/bin/env bash
# A real Slurm cluster on this machine: munged, slurmctld and slurmd, as root.
#
#   scripts/local-cluster.sh start [--nodes N]   idempotent; returns when every node is idle (or fails)
#   scripts/local-cluster.sh stop [--nodes N]    stops only the daemons this script started (by pid)
#   scripts/local-cluster.sh status [--nodes N]  daemons, sinfo, and where the logs are
#
# One node (the default): the config is rendered from slurm/slurm.conf.template with this
# machine's hostname and the CPUs and memory that 'slurmd -C' reports. State, spool and logs
# live under $HPCTRAIN_CLUSTER_DIR (default: .cluster in the checkout). The rendered config is
# installed as /etc/slurm/slurm.conf only when that file is absent or was written by this
# script, so Slurm's client commands (and submitit) find it without SLURM_CONF; otherwise
# export SLURM_CONF=$HPCTRAIN_CLUSTER_DIR/slurm.conf.
#
# --nodes N (2 to 8): N nodes n1..nN, each slurmd in a network namespace of its own
# (hpctrain-nI, address 10.213.0.(10+I) on the bridge hpctrain-br, 10.213.0.1) and a UTS
# namespace of its own, so `hostname` says nI in its jobs. Each node gets all of the machine's
# CPUs and 1/N of its memory, its name in /etc/hosts (removed by stop), and a TmpFS of its own
# (<dir>/tmp/nI); the file system is shared, like a cluster's. It runs beside a one-node cluster:
# its own directory (default .cluster-Nnode), its own ports (6827/6828), and a config that is
# never installed in /etc: clients need `export SLURM_CONF=<dir>/slurm.conf` (start prints it).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
nodes=1
if [ "${2:-}" = "--nodes" ]; then
    nodes=${3:-}
    case "$nodes" in [1-8]) ;; *) echo "local-cluster: --nodes takes 1 to 8, got '${nodes}'" >&2; exit 2 ;; esac
fi
if [ "$nodes" -gt 1 ]; then
    run=${HPCTRAIN_CLUSTER_DIR:-$here/.cluster-${nodes}node}
    ctld_port=${HPCTRAIN_SLURMCTLD_PORT:-6827}
    slurmd_port=${HPCTRAIN_SLURMD_PORT:-6828}
else
    run=${HPCTRAIN_CLUSTER_DIR:-$here/.cluster}
    ctld_port=${HPCTRAIN_SLURMCTLD_PORT:-6817}
    slurmd_port=${HPCTRAIN_SLURMD_PORT:-6818}
fi
conf=$run/slurm.conf
marker="# hpctrain local test cluster"
etc_conf=/etc/slurm/slurm.conf
bridge=hpctrain-br
subnet=10.213.0
hosts_marker="# hpctrain local-cluster node"

say() { printf '[local-cluster] %s\n' "$*"; }
die() { printf '[local-cluster] error: %s\n' "$*" >&2; exit 1; }

pid_alive() {  # pidfile, expected command name
    [ -f "$1" ] || return 1
    local pid; pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q "$2" "/proc/$pid/comm" 2>/dev/null
}

node_names() {
    if [ "$nodes" -gt 1 ]; then seq -f 'n%g' 1 "$nodes"; else hostname -s; fi
}

render() {
    local host cpus mem node_lines ctld_host i
    host=$(hostname -s)
    read -r cpus mem < <(slurmd -C | awk '/^NodeName/ {for(i=1;i<=NF;i++){split($i,a,"="); if(a[1]=="CPUs")c=a[2]; if(a[1]=="RealMemory")m=a[2]} print c, m}')
    [ -n "$cpus" ] && [ -n "$mem" ] || die "'slurmd -C' did not report CPUs and RealMemory"
    mem=$(( mem * 95 / 100 / nodes ))  # leave slack: slurmd drains a node that reports less than configured
    if [ "$nodes" -gt 1 ]; then
        ctld_host="$host($subnet.1)"
        # Slurm's PMIx plugin makes <TmpFS>/spmix_appdir_<uid>_<job>.<step> on every node of a
        # step; with one shared /tmp the second node failed the launch with "File exists".
        # TmpFS takes %n: a directory per node.
        node_lines="TmpFS=$run/tmp/%n"$'\n'

        for i in $(seq "$nodes"); do
            node_lines+="NodeName=n$i NodeAddr=$subnet.$((10 + i)) NodeHostname=n$i CPUs=$cpus RealMemory=$mem State=UNKNOWN"$'\n'
        done
    else
        ctld_host=$host
        node_lines="NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    fi
    sed -e "s|@HOST@|$ctld_host|g" -e "s|@RUN@|$run|g" \
        -e "s|@CTLD_PORT@|$ctld_port|g" -e "s|@SLURMD_PORT@|$slurmd_port|g" \
        -e "/^@NODES@\$/{r /dev/stdin" -e "d}" \
        "$here/slurm/slurm.conf.template" <<<"$node_lines" > "$conf.tmp"
    mv "$conf.tmp" "$conf"
    [ "$nodes" -gt 1 ] && return 0
    if [ ! -e "$etc_conf" ] || grep -q "^$marker" "$etc_conf"; then
        mkdir -p "$(dirname "$etc_conf")"
        cp "$conf" "$etc_conf"
    elif ! cmp -s "$conf" "$etc_conf"; then
        say "note: $etc_conf belongs to another Slurm; export SLURM_CONF=$conf to use this cluster"
    fi
}

net_up() {  # the bridge and one namespace per node, idempotent
    command -v ip >/dev/null || die "'ip' not found (apt: iproute2)"
    ip link show "$bridge" >/dev/null 2>&1 || {
        ip link add "$bridge" type bridge
        ip addr add "$subnet.1/24" dev "$bridge"
    }
    ip link set "$bridge" up
    local i ns
    for i in $(seq "$nodes"); do
        ns=hpctrain-n$i
        [ -e "/var/run/netns/$ns" ] || ip netns add "$ns"
        if ! ip link show "hpctrain-v$i" >/dev/null 2>&1; then
            ip link add "hpctrain-v$i" type veth peer name eth0 netns "$ns"
            ip -n "$ns" addr add "$subnet.$((10 + i))/24" dev eth0
        fi
        ip link set "hpctrain-v$i" master "$bridge" up
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route replace default via "$subnet.1"
    done
}

hosts_up() {  # node names resolve, as on a real cluster (torch's rendezvous dials n1 by name)
    hosts_down
    local i
    { for i in $(seq "$nodes"); do echo "$subnet.$((10 + i)) n$i $hosts_marker"; done; } >> /etc/hosts
}

hosts_down() {
    # rewrite in place: /etc/hosts may be a bind mount that cannot be replaced by a rename
    local keep; keep=$(grep -v -- "$hosts_marker" /etc/hosts || true)
    printf '%s\n' "$keep" > /etc/hosts
}

net_down() {
    local i
    for i in $(seq "$nodes"); do
        ip link del "hpctrain-v$i" 2>/dev/null || true
        ip netns del "hpctrain-n$i" 2>/dev/null || true
    done
    ip link del "$bridge" 2>/dev/null || true
}

start_slurmd() {  # node name
    if [ "$nodes" -gt 1 ]; then
        # nsenter, not 'ip netns exec': that remounts /sys and slurmd then finds no cgroup fs.
        # A UTS namespace of its own gives the node (and every job step on it) its hostname.
        mkdir -p "$run/tmp/$1" "$run/spool/$1"
        nsenter --net="/var/run/netns/hpctrain-$1" unshare --uts \
            sh -c "hostname '$1' && exec slurmd -f '$conf' -N '$1'"
    else
        slurmd -f "$conf"
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
    if [ "$nodes" -gt 1 ]; then net_up; hosts_up; fi
    local t0=$SECONDS node state want
    pid_alive "$run/slurmctld.pid" slurmctld || slurmctld -f "$conf"
    for node in $(node_names); do
        pid_alive "$run/slurmd-$node.pid" slurmd || start_slurmd "$node"
    done
    want=$(node_names | wc -l)
    for _ in $(seq 300); do
        state=$(SLURM_CONF=$conf sinfo -h -N -o '%N %T' 2>/dev/null || true)
        for node in $(awk '$2 ~ /^(down|drain)/ {print $1}' <<<"$state"); do
            SLURM_CONF=$conf scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
        done
        [ "$(awk '$2 ~ /^(idle|mixed|allocated)/' <<<"$state" | wc -l)" -ge "$want" ] && break
        sleep 0.1
    done
    if [ "$(awk '$2 ~ /^(idle|mixed|allocated)/' <<<"$state" | wc -l)" -ge "$want" ]; then
        say "up in $((SECONDS - t0)) s: $(tr '\n' ' ' <<<"$state")(config $conf, logs $run/log)"
        [ "$nodes" -gt 1 ] && say "clients: export SLURM_CONF=$conf"
        return 0
    fi
    tail -n 20 "$run/log/slurmctld.log" "$run"/log/slurmd-*.log >&2 2>/dev/null || true
    die "nodes not idle after 30 s: '${state:-no answer}' (logs above)"
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
    local node
    for node in $(node_names); do
        stop_one "$run/slurmd-$node.pid" slurmd
    done
    stop_one "$run/slurmctld.pid" slurmctld
    if [ "$nodes" -gt 1 ]; then net_down; hosts_down; fi
    if [ -f "$run/munged.ours" ]; then
        stop_one "$run/munged.pid" munged
        rm -f "$run/munged.ours"
    fi
}

status() {
    local node
    pid_alive "$run/slurmctld.pid" slurmctld && say "slurmctld running (pid $(cat "$run/slurmctld.pid"))" || say "slurmctld not running"
    for node in $(node_names); do
        pid_alive "$run/slurmd-$node.pid" slurmd && say "slurmd $node running (pid $(cat "$run/slurmd-$node.pid"))" \
            || say "slurmd $node not running"
    done
    [ -f "$conf" ] && SLURM_CONF=$conf sinfo 2>&1 || true
    say "logs: $run/log"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status [--nodes N]" >&2; exit 2 ;;
esac
