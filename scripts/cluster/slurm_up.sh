#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, with accounting (slurmdbd + MariaDB) so that `sacct`
# works, for testing the Snakemake profile profiles/slurm on a real scheduler. Idempotent: installs the
# Debian packages when missing (needs root and apt), writes a private configuration under STATE
# (default /var/tmp/retina-sr-slurm) and starts, each only when not already running:
#   munged (standard socket; one already running is reused), mariadbd (private datadir, 127.0.0.1),
#   slurmdbd, slurmctld, slurmd.
# Nothing under /etc is written (except /etc/munge/munge.key when the package left none) and no system
# service is started, so an existing Slurm/MariaDB installation is left alone. slurmd runs configless
# and links /run/slurm/conf to its cached configuration (removed by slurm_down.sh), so only one such
# cluster can run on a machine at a time.
# Stop everything with scripts/cluster/slurm_down.sh.
#
# Cluster: one node, "$(hostname -s)", shaped like a GPU node whatever this machine is: CPUs and memory
# declared as the larger of the machine's (90 % of its memory) and RETINA_SR_SLURM_CPUS /
# RETINA_SR_SLURM_MEM_MB (defaults 16 and 65536, so that profiles/slurm's full-study requests fit), and
# one *fake* GPU (gres bound to /dev/null: `sbatch --gpus=1` and the gpu partition work on a CPU
# machine; jobs get CUDA_VISIBLE_DEVICES=0, which on a CPU machine names no device). Partitions: cpu
# (default) and gpu.
# No cgroups: proctrack/linuxproc, task/none, select/cons_tres with CR_Core_Memory, nothing enforced.
#
# Afterwards: `source STATE/env.sh` (sets SLURM_CONF) and use sbatch/squeue/sacct as usual.
# Environment: RETINA_SR_SLURM_DIR (STATE), RETINA_SR_SLURM_CTLD_PORT / _SLURMD_PORT / _DBD_PORT
# (defaults 6817/6818/6819), RETINA_SR_SLURM_CLUSTER (cluster name, default retina-sr-local).
set -euo pipefail

STATE=${RETINA_SR_SLURM_DIR:-/var/tmp/retina-sr-slurm}
CLUSTER=${RETINA_SR_SLURM_CLUSTER:-retina-sr-local}
CTLD_PORT=${RETINA_SR_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${RETINA_SR_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${RETINA_SR_SLURM_DBD_PORT:-6819}
DECL_CPUS=${RETINA_SR_SLURM_CPUS:-16}
DECL_MEM=${RETINA_SR_SLURM_MEM_MB:-65536}
ACCOUNT=retina
NODE=$(hostname -s)

say() { echo "slurm_up: $*" >&2; }
die() { echo "slurm_up: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (slurmd starts jobs as their users; apt installs the packages)"
getent hosts "$NODE" >/dev/null || die "host name '$NODE' does not resolve: add '127.0.0.1 $NODE' to /etc/hosts"

# ------------------------------------------------------------------------------------- packages
need=()
for pair in slurmctld:slurmctld slurmd:slurmd slurmdbd:slurmdbd sbatch:slurm-client munged:munge \
            mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get: install them with your package manager"
    say "installing ${need[*]} (Debian packages)"
    # keep the packages' init scripts from starting system-wide daemons: this script starts its own
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    trap '[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 \
        || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             --no-install-recommends "${need[@]}" >&2; } || die "apt-get install ${need[*]} failed"
fi

# --------------------------------------------------------------------------------------- helpers
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION LOGFILE COMMAND...
    local secs=$1 what=$2 log=$3; shift 3
    local end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ]; do timeout 10 "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    die "$what not ready after ${secs}s; see $log"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$STATE"/{etc,log,run,ctld,slurmd,mysql}
chmod 755 "$STATE"
export SLURM_CONF="$STATE/etc/slurm.conf"
cat > "$STATE/env.sh" <<ENV
# source this file to use the local test cluster (scripts/cluster/slurm_up.sh)
export SLURM_CONF=$SLURM_CONF
ENV

# ----------------------------------------------------------------------------------------- munge
# Slurm's clients reach MUNGE on its standard socket (sacctmgr ignores AuthInfo=socket= for slurmdbd
# connections in 22.05), so a munged that already runs there is used as it is; otherwise one is started
# with the package's defaults (key /etc/munge/munge.key, log /var/log/munge/munged.log) and its pid is
# kept in STATE so that slurm_down.sh stops it.
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    alive "$STATE/run/munged.pid" || say "using the munged already running"
else
    [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create --keyfile /etc/munge/munge.key
    for d in /run/munge /var/log/munge /var/lib/munge; do mkdir -p "$d" && chown munge:munge "$d"; done
    chmod 755 /run/munge
    runuser -u munge -- munged || die "munged did not start; see /var/log/munge/munged.log"
    cp /run/munge/munged.pid "$STATE/run/munged.pid"
    say "munged started"
fi
wait_for 10 munged /var/log/munge/munged.log bash -c 'munge -n | unmunge'

# --------------------------------------------------------------------------------------- mariadb
DB_SOCKET="$STATE/run/mysqld.sock"
[ -s "$STATE/etc/db.port" ] || free_port > "$STATE/etc/db.port"
DB_PORT=$(cat "$STATE/etc/db.port")
if ! alive "$STATE/run/mysqld.pid"; then
    if [ ! -d "$STATE/mysql/mysql" ]; then
        mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" --skip-test-db \
            > "$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $STATE/log/mariadb-install.log"
    fi
    setsid mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --socket="$DB_SOCKET" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$STATE/run/mysqld.pid" \
        --log-error="$STATE/log/mysqld.log" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
        </dev/null >/dev/null 2>&1 &
    say "mariadbd starting on 127.0.0.1:$DB_PORT"
fi
wait_for 60 mariadbd "$STATE/log/mysqld.log" mariadb --no-defaults --socket="$DB_SOCKET" -uroot -e 'SELECT 1'
[ -s "$STATE/etc/db.pass" ] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$STATE/etc/db.pass"; chmod 600 "$STATE/etc/db.pass"; }
DB_PASS=$(cat "$STATE/etc/db.pass")
mariadb --no-defaults --socket="$DB_SOCKET" -uroot <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

# ------------------------------------------------------------------------------ slurm configuration
if ! alive "$STATE/run/slurmctld.pid" && ! alive "$STATE/run/slurmd.pid" && ! alive "$STATE/run/slurmdbd.pid"; then
    hw=$(slurmd -C | head -1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$((mem * 9 / 10))
    # declared at least as large as a GPU node the profile asks for (SlurmdParameters=config_overrides:
    # slurmd trusts the declaration); a job's threads are still capped at the machine's CPUs by the stages
    [ "$cpus" -ge "$DECL_CPUS" ] || cpus=$DECL_CPUS
    [ "$mem" -ge "$DECL_MEM" ] || mem=$DECL_MEM
    cat > "$STATE/etc/slurm.conf" <<CONF
# written by scripts/cluster/slurm_up.sh: a single-node test cluster, no cgroups
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
SlurmctldParameters=enable_configless
GresTypes=gpu
ReturnToService=2
MinJobAge=300
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
CONF
    # a fake GPU: slurmd counts a gpu gres only with a device file, and /dev/null binds nothing (no
    # cgroup device constraint here); enough for --gpus, the gpu partition and gres accounting
    echo "NodeName=$NODE Name=gpu File=/dev/null" > "$STATE/etc/gres.conf"
    cat > "$STATE/etc/slurmdbd.conf" <<CONF
# written by scripts/cluster/slurm_up.sh
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
CONF
    chmod 600 "$STATE/etc/slurmdbd.conf"
fi

# --------------------------------------------------------------------------------- slurm daemons
# one configless slurmd per machine: /run/slurm/conf holds its cluster's configuration
cached=/run/slurm/conf/slurm.conf
if [ -s "$cached" ] && ! grep -qx "SlurmctldPort=$CTLD_PORT" "$cached" && ! alive "$STATE/run/slurmd.pid"; then
    other=$(sed -n 's/^SlurmctldPort=//p' "$cached")
    if [ -n "$other" ] && timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$other" 2>/dev/null; then
        die "another single-node cluster (slurmctld port $other, $cached) runs on this machine: stop it first \
(scripts/cluster/slurm_down.sh with its RETINA_SR_SLURM_DIR)"
    fi
fi
if ! alive "$STATE/run/slurmdbd.pid"; then
    slurmdbd || die "slurmdbd did not start; see $STATE/log/slurmdbd.log"
    say "slurmdbd started"
fi
wait_for 60 slurmdbd "$STATE/log/slurmdbd.log" sacctmgr -n list cluster
sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >&2
if ! alive "$STATE/run/slurmctld.pid"; then
    slurmctld || die "slurmctld did not start; see $STATE/log/slurmctld.log"
    say "slurmctld started"
fi
wait_for 60 slurmctld "$STATE/log/slurmctld.log" bash -c 'scontrol ping | grep -q UP'
if ! alive "$STATE/run/slurmd.pid"; then
    # configless: slurmd fetches the configuration from slurmctld and caches it in /run/slurm/conf, where
    # commands inside a job find it: snakemake's jobstep plugin drops SLURM_CONF (all SLURM_* variables)
    # before its nested srun
    slurmd --conf-server "127.0.0.1:$CTLD_PORT" || die "slurmd did not start; see $STATE/log/slurmd.log"
    say "slurmd started"
fi
sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" \
    || sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="retina-sr test" Organization=retina-sr >&2
sacctmgr -n -P list assoc user=root format=account | grep -qx "$ACCOUNT" \
    || sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >&2
# a drain left in the saved state by an earlier configuration (slurmctld keeps it) is lifted once the
# node has registered with this one
wait_for 60 "node $NODE registration" "$STATE/log/slurmd.log" \
    bash -c "scontrol show node '$NODE' | grep -q 'State=' && ! scontrol show node '$NODE' | grep -Eq 'State=(UNKNOWN|DOWN)'"
if sinfo -h -n "$NODE" -o %t | grep -q '^drain'; then
    scontrol update NodeName="$NODE" State=RESUME && say "node $NODE resumed from an earlier drain"
fi
wait_for 60 "node $NODE" "$STATE/log/slurmd.log" bash -c "sinfo -h -n '$NODE' -o %t | grep -Eq '^(idle|mix|alloc)\$'"
sinfo >&2
say "ready: source $STATE/env.sh (SLURM_CONF=$SLURM_CONF); stop with scripts/cluster/slurm_down.sh"
