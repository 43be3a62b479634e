#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, on the loopback address, for the executor's tests
# (`python -m lib.train_units --executor slurm`): Debian's slurm-wlm and munge, installed if missing.
# Needs root on Debian; otherwise it says why and exits 3 (the tests then skip, naming the reason).
#   tools/slurm-local.sh        start it (idempotent: a running cluster is left as it is), wait until the node is idle
#   tools/slurm-local.sh stop   stop the daemons
set -euo pipefail

conf=/etc/slurm/slurm.conf
skip() { echo "slurm-local: $*" >&2; exit 3; }

if [ "${1:-}" = stop ]; then
  pkill -x slurmd || true; pkill -x slurmctld || true; pkill -x munged || true
  exit 0
fi

[ "$(id -u)" = 0 ] || skip "needs root (apt-get, /etc/slurm, daemons); run it as root or skip the SLURM tests"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || skip "needs Debian's apt-get to install slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; } \
    || skip "apt-get could not install slurm-wlm and munge"
fi

if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
  exit 0  # already up
fi

cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat > "$conf" <<CONF
ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MaxArraySize=1001
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
rm -f /etc/slurm/cgroup.conf  # none: slurmd picks the cgroup plugin the kernel has (proctrack and task need none)

[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
pgrep -x -r R,S,D munged >/dev/null || runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
pgrep -x -r R,S,D slurmctld >/dev/null || slurmctld
pgrep -x -r R,S,D slurmd >/dev/null || slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then exit 0; fi
  scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
  sleep 1
done
skip "the node did not come up idle within 60 s (see /var/log/slurm/)"
