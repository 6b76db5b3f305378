#!/usr/bin/env bash
# Start a local one-node SLURM cluster (Debian packages) so batch tests run against the real thing.
# Idempotent: does nothing when sinfo already answers.
set -euo pipefail
if command -v sinfo >/dev/null 2>&1 && timeout 5 sinfo >/dev/null 2>&1; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
host=$(hostname -s)
mkdir -p /etc/munge /var/log/slurm /var/spool/slurmctld /var/spool/slurmd /run/munge /etc/slurm
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=cxr
SlurmctldHost=${host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=none
NodeName=${host} CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 30); do
  if sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then echo "SLURM ready"; exit 0; fi
  sleep 1
done
echo "SLURM did not become ready" >&2
exit 1
