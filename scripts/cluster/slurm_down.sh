#!/usr/bin/env bash
# Stop the daemons scripts/cluster/slurm_up.sh started (pids from its STATE folder only): cancels the
# cluster's jobs, then stops slurmd, slurmctld, slurmdbd, mariadbd and munged. The accounting database
# and configuration stay in STATE for the next start; `--purge` deletes STATE as well.
set -uo pipefail

STATE=${RETINA_SR_SLURM_DIR:-/var/tmp/retina-sr-slurm}
say() { echo "slurm_down: $*" >&2; }
[ -d "$STATE" ] || { say "nothing to stop ($STATE absent)"; exit 0; }
export SLURM_CONF="$STATE/etc/slurm.conf"

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
is() { [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ]; }  # is NAME PID: guards against a reused pid
stop() {  # stop NAME PIDFILE: TERM, wait up to 30 s, then KILL
    local name=$1 pidfile=$2 pid
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    is "$name" "$pid" || { say "$pidfile: pid $pid is not $name any more; left alone"; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || { say "$name stopped"; return 0; }; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null
    say "$name killed (did not stop within 30 s)"
}

if alive "$STATE/run/slurmctld.pid"; then
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// }" ]; then
        say "cancelling jobs $jobs"
        scancel $jobs 2>/dev/null
        for _ in $(seq 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
    fi
fi
stop slurmd "$STATE/run/slurmd.pid"
stop slurmctld "$STATE/run/slurmctld.pid"
stop slurmdbd "$STATE/run/slurmdbd.pid"
stop mariadbd "$STATE/run/mysqld.pid"
stop munged "$STATE/run/munged.pid"   # only when slurm_up.sh started it
# slurmd's configless cache: /run/slurm/conf links to its copy in STATE
if [ -L /run/slurm/conf ] && [[ "$(readlink /run/slurm/conf)" == "$STATE"/* ]]; then
    rm -f /run/slurm/conf
fi
if [ "${1:-}" = --purge ]; then
    rm -rf -- "$STATE" && say "removed $STATE"
fi
