#!/usr/bin/env bash
# Host tuning for a dedicated Ruuster node. Prints what it would change, and changes it with
# --apply (as root). Every change is reversible by a reboot except the files it writes, which it
# names. Read each section before applying it to a shared machine.
#
#   scripts/deploy/host-tuning.sh                 # report only
#   scripts/deploy/host-tuning.sh --apply --broker-cpus 2,3 --irq-cpus 0,1
set -euo pipefail

apply=false
broker_cpus=""
irq_cpus=""
while [ $# -gt 0 ]; do
  case "$1" in
    --apply) apply=true ;;
    --broker-cpus) broker_cpus="$2"; shift ;;
    --irq-cpus) irq_cpus="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

run() {
  if $apply; then echo "+ $*"; "$@"; else echo "would run: $*"; fi
}

echo "== kernel and io_uring"
echo "kernel: $(uname -r) (5.8 or newer needed)"
if [ -r /proc/sys/kernel/io_uring_disabled ]; then
  setting=$(cat /proc/sys/kernel/io_uring_disabled)
  echo "kernel.io_uring_disabled = $setting (0 needed for non-root brokers)"
  [ "$setting" = 0 ] || run sysctl -w kernel.io_uring_disabled=0
fi

echo "== locked memory"
echo "memlock limit of this shell: $(ulimit -l) KiB"
echo "the systemd unit sets LimitMEMLOCK=infinity; for a shell, add to /etc/security/limits.d/ruuster.conf:"
echo "  ruuster - memlock unlimited"
if $apply; then
  printf 'ruuster - memlock unlimited\n' > /etc/security/limits.d/ruuster.conf
  echo "wrote /etc/security/limits.d/ruuster.conf"
fi

echo "== CPU isolation (needs a reboot; printed, never applied)"
if [ -n "$broker_cpus" ]; then
  echo "add to the kernel command line so nothing else is scheduled on the broker's CPUs:"
  echo "  isolcpus=managed_irq,domain,$broker_cpus nohz_full=$broker_cpus rcu_nocbs=$broker_cpus"
  echo "then set in ruuster.toml: cpus = [$broker_cpus]"
else
  echo "pass --broker-cpus LIST to print the isolcpus/nohz_full settings for those CPUs"
fi

echo "== IRQ affinity"
if [ -n "$irq_cpus" ]; then
  mask=0
  IFS=',' read -ra list <<< "$irq_cpus"
  for cpu in "${list[@]}"; do mask=$((mask | (1 << cpu))); done
  hex=$(printf '%x' "$mask")
  echo "steering device interrupts to CPUs $irq_cpus (mask $hex), away from the broker's shards"
  if systemctl is-active --quiet irqbalance 2>/dev/null; then
    run systemctl stop irqbalance
  fi
  for irq in /proc/irq/[0-9]*; do
    [ -w "$irq/smp_affinity" ] || continue
    if $apply; then
      echo "$hex" > "$irq/smp_affinity" 2>/dev/null || echo "  irq $(basename "$irq"): not movable"
    else
      echo "would write $hex to $irq/smp_affinity"
    fi
  done
else
  echo "pass --irq-cpus LIST to move device interrupts to those CPUs"
fi

echo "== CPU frequency and disk"
for governor in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do
  [ -e "$governor" ] || { echo "no cpufreq control (virtual machine?)"; break; }
  current=$(cat "$governor")
  [ "$current" = performance ] || run sh -c "echo performance > $governor"
done
for scheduler in /sys/block/*/queue/scheduler; do
  [ -e "$scheduler" ] || continue
  echo "$(dirname "$(dirname "$scheduler")" | xargs basename): scheduler $(cat "$scheduler")" \
    "(none or mq-deadline suits NVMe and virtio)"
done
$apply || echo "report only: rerun with --apply as root to change what is marked 'would'"
