#!/usr/bin/env bash
# Start a local one-node SLURM cluster (Debian packages) so batch tests run against the real thing.
# Idempotent: does nothing when the controller answers and a job runs; restarts the daemons otherwise.
# Everything talks over 127.0.0.1, so a CI host whose name does not resolve (or resolves to an address
# nothing listens on) still gets a working cluster. On failure it prints the daemons' logs and exits 1.
set -uo pipefail

ping_ok() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
job_ok() { timeout 60 sbatch --parsable --wait --output=/dev/null --wrap true >/dev/null 2>&1; }
diagnose() {
  echo "--- hostname: $(hostname) / $(getent hosts "$(hostname)" || echo unresolved)" >&2
  for log in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/munge/munged.log; do
    [ -f "$log" ] && { echo "--- tail $log" >&2; tail -n 15 "$log" >&2; }
  done
}

if command -v sbatch >/dev/null 2>&1 && ping_ok && job_ok; then echo "SLURM ready (already running)"; exit 0; fi

set -e
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
host=$(hostname -s 2>/dev/null || hostname)
grep -qE "^127\.0\.0\.1[[:space:]].*\b${host}\b" /etc/hosts || echo "127.0.0.1 ${host}" >>/etc/hosts
mkdir -p /etc/munge /var/log/munge /var/lib/munge /run/munge /var/log/slurm /var/spool/slurmctld \
  /var/spool/slurmd /etc/slurm
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=cxr
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MessageTimeout=30
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=none
NodeName=${host} NodeAddr=127.0.0.1 NodeHostname=${host} CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
set +e

# (Re)start from a clean slate: a half-started daemon from an earlier attempt would hold the ports.
pkill -x slurmd; pkill -x slurmctld
sleep 1
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
slurmctld || { echo "slurmctld did not start" >&2; diagnose; exit 1; }
slurmd -N "${host}" || { echo "slurmd did not start" >&2; diagnose; exit 1; }

for _ in $(seq 1 60); do
  if ping_ok && timeout 10 sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    if job_ok; then echo "SLURM ready"; exit 0; fi
    echo "the controller answers but a test job did not run" >&2
    diagnose
    exit 1
  fi
  sleep 1
done
echo "SLURM did not become ready" >&2
diagnose
exit 1
