#!/bin/sh
# The boot check's view from inside a booted, provisioned node: run as root
# (sudo) over SSH with the key the provisioning installed. imgforge puts its
# settings before this text as variable assignments:
#   SETTLE_S   seconds `systemctl is-system-running --wait` may take
#   MOUNT      ResourceDisk.MountPoint (empty: read from /etc/waagent.conf)
#   HARDWARE   unit-name patterns that fail without a GPU/InfiniBand
#   DOCKER_ROOT  Docker's data-root when the image has Docker, else empty
#   GLUSTERD   1 when the image is a GlusterFS server
#   INBOUND    TCP ports the host firewall must admit
#   EGRESS     an address whose TCP 443 answers `imgforge-egress`
#   CHECKS     the catalog's in-VM checks: FEATURE<TAB>NEEDS_HW<TAB>MESSAGE<TAB>COMMAND
# It prints one line per check, `ROW <check> <pass|fail|warn|skip> <message>`,
# each followed by evidence lines that start with two spaces. Every wait is
# bounded by timeout(1).
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
export PATH LC_ALL
tab=$(printf '\t')

row() { printf 'ROW %s %s %s\n' "$1" "$2" "$3"; }
evidence() { head -n "${1:-20}" | cut -c1-300 | sed -e 's/^/  /'; }

# Boot settled: every start job done, and how.
start=$(date +%s)
state=$(timeout "$SETTLE_S" systemctl is-system-running --wait 2>/dev/null)
took=$(( $(date +%s) - start ))
case "$state" in
  running) row settled pass "systemd settled in ${took} s: running" ;;
  degraded) row settled fail "systemd settled in ${took} s, degraded: a unit failed" ;;
  '') row settled fail "systemd did not settle within ${SETTLE_S} s"
      systemctl list-jobs --no-pager 2>&1 | evidence 10 ;;
  *) row settled fail "systemd settled in ${took} s as '$state'" ;;
esac
settled_at=$(date +%s)

# cloud-init provisioned the node from Azure's datasource.
if command -v cloud-init >/dev/null 2>&1; then
  out=$(timeout 60 cloud-init status --long 2>&1)
  rc=$?
  source=$(printf '%s\n' "$out" | grep -m 1 'DataSource' | sed -e 's/^[[:space:]]*//')
  case "$out" in
    *'status: done'*)
      case "$source" in
        DataSourceAzure*) row cloud-init pass "cloud-init finished (exit $rc) with $source" ;;
        *) row cloud-init fail "cloud-init finished without Azure's datasource (${source:-none}): it would not provision the node on Azure" ;;
      esac ;;
    *) row cloud-init fail "cloud-init did not finish cleanly (exit $rc)" ;;
  esac
  printf '%s\n' "$out" | evidence 12
  grep -h -E 'WARNING|ERROR|Traceback' /var/log/cloud-init.log 2>/dev/null | tail -n 5 | evidence 5
else
  row cloud-init fail "cloud-init is not installed: nothing provisions the node on Azure"
fi

# The Azure Linux agent: Batch installs its node agent through it.
unit=''
for u in walinuxagent.service waagent.service; do
  if systemctl cat "$u" >/dev/null 2>&1; then unit=$u; break; fi
done
if [ -z "$unit" ]; then
  row agent fail "no walinuxagent or waagent unit: Azure Batch installs its node agent through the Azure Linux agent"
else
  version=$(timeout 60 waagent --version 2>&1 | head -n 1)
  vrc=$?
  enabled=$(systemctl is-enabled "$unit" 2>/dev/null)
  active=$(systemctl is-active "$unit" 2>/dev/null)
  if [ "$enabled" != enabled ]; then
    row agent fail "$unit is ${enabled:-unknown} at boot: it must be enabled"
  elif ! printf '%s' "$version" | grep -q 'WALinuxAgent'; then
    row agent fail "waagent --version did not run (exit $vrc): $version"
  elif [ "$active" = active ]; then
    row agent pass "$unit is running ($version)"
  elif [ "$(systemctl show -p ConditionResult --value "$unit")" = no ] &&
       systemctl cat "$unit" 2>/dev/null | grep -q '^ConditionVirtualization=microsoft'; then
    row agent skip "$unit is enabled and the agent runs ($version), but systemd starts it only on Hyper-V (ConditionVirtualization=microsoft), which QEMU cannot present: its extension handling is untested here"
  else
    row agent fail "$unit is enabled but $active"
    journalctl -b -u "$unit" -n 8 --no-pager -o cat 2>&1 | evidence 8
  fi
fi

# The resource disk at ResourceDisk.MountPoint.
if [ -z "$MOUNT" ]; then
  MOUNT=$(sed -n 's/^[[:space:]]*ResourceDisk\.MountPoint[[:space:]]*=[[:space:]]*//p' /etc/waagent.conf 2>/dev/null | tail -n 1)
  MOUNT=${MOUNT:-/mnt/resource}
fi
if mountpoint -q "$MOUNT" 2>/dev/null; then
  row resource-disk pass "$(findmnt -n -o SOURCE,FSTYPE "$MOUNT" | tr -s ' ') is mounted at $MOUNT"
elif [ -e /dev/disk/cloud/azure_resource ]; then
  row resource-disk fail "the resource disk is present but not mounted at $MOUNT"
else
  row resource-disk skip "a blank resource disk is attached, but cloud-init and the agent find it only by its Hyper-V VMBus id, which QEMU cannot present: nothing is mounted at $MOUNT here"
fi
lsblk -o NAME,SIZE,TYPE,FSTYPE,MOUNTPOINT 2>&1 | evidence 12

# Docker, started as Batch Shipyard starts it (disabled at boot: its
# data-root is on the resource disk).
if [ -n "$DOCKER_ROOT" ]; then
  json=''
  if [ -e /etc/docker/daemon.json ]; then
    json=$(python3 -c 'import json, sys; json.load(open(sys.argv[1]))' /etc/docker/daemon.json 2>&1 | tail -n 1)
  fi
  if timeout 120 systemctl start docker.service >/dev/null 2>&1 && timeout 60 docker version >/dev/null 2>&1; then
    version=$(timeout 30 docker version --format '{{.Server.Version}}' 2>&1)
    root=$(timeout 30 docker info --format '{{.DockerRootDir}}' 2>&1)
    if [ "$root" != "$DOCKER_ROOT" ]; then
      row docker fail "Docker $version runs with data-root $root, not $DOCKER_ROOT (on the resource disk, as Batch Shipyard expects)"
    elif [ ! -S /var/run/docker.sock ]; then
      row docker fail "Docker $version runs but /var/run/docker.sock is not a socket"
    else
      row docker pass "Docker $version started; data-root $root; socket /var/run/docker.sock"
    fi
  else
    if [ -n "$json" ]; then
      row docker fail "Docker did not start: /etc/docker/daemon.json is not valid JSON ($json)"
    else
      row docker fail "Docker did not start"
    fi
    journalctl -b -u docker.service -n 10 --no-pager -o cat 2>&1 | evidence 10
  fi
fi

if [ "$GLUSTERD" = 1 ]; then
  if [ "$(systemctl is-active glusterd.service 2>/dev/null)" = active ]; then
    row glusterd pass "glusterd is running"
  else
    row glusterd fail "glusterd is not running: a GlusterFS server node serves its bricks through it"
    journalctl -b -u glusterd.service -n 8 --no-pager -o cat 2>&1 | evidence 8
  fi
fi

# The catalog's in-VM checks, one row per feature.
printf '%s\n' "$CHECKS" | awk -F "$tab" 'NF == 4 {print $1}' | uniq | while read -r feature; do
  failed=''
  passed=0
  skipped=''
  out=$(printf '%s\n' "$CHECKS" | while IFS="$tab" read -r f hw message command; do
    [ "$f" = "$feature" ] || continue
    if timeout 60 sh -c "$command" >/dev/null 2>&1; then
      echo "ok $command"
    elif [ "$hw" = 1 ]; then
      echo "hw $command"
    else
      echo "no $message ($command)"
    fi
  done)
  passed=$(printf '%s\n' "$out" | grep -c '^ok ')
  skipped=$(printf '%s\n' "$out" | grep '^hw ' | sed -e 's/^hw //' | paste -sd ';' -)
  failed=$(printf '%s\n' "$out" | grep '^no ' | sed -e 's/^no //' | paste -sd ';' -)
  if [ -n "$failed" ]; then
    row "feature.$feature" fail "$failed"
  elif [ -n "$skipped" ]; then
    row "feature.$feature" skip "$passed passed; no such hardware in this VM for: $skipped"
  else
    row "feature.$feature" pass "$passed in-VM check(s) passed"
  fi
done

# Outbound TCP 443 (Azure Storage, Batch) admitted.
for port in 443; do
  reply=$(timeout 15 python3 -c 'import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10)
s.sendall(b"imgforge-probe\n")
print(s.recv(64).decode(errors="replace").strip())' "$EGRESS" "$port" 2>&1 | tail -n 1)
  if [ "$reply" = imgforge-egress ]; then
    row outbound pass "TCP $port out of the node is admitted (a host-side listener answered)"
  else
    row outbound fail "TCP $port out of the node got no answer: ${reply:-timed out}"
  fi
done

# The host firewall's inbound rules, seen from inside (the row first, then
# what it was read from).
missing=''
if command -v ufw >/dev/null 2>&1; then
  status=$(ufw status 2>&1)
  if ! printf '%s\n' "$status" | grep -q '^Status: active'; then
    row firewall-rules fail "ufw is not active"
  else
    for p in $INBOUND; do
      printf '%s\n' "$status" | grep -Eq "^$p(/tcp)?[[:space:]]+ALLOW" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then row firewall-rules fail "ufw is active but does not admit TCP$missing"
    else row firewall-rules pass "ufw is active and admits TCP $INBOUND"; fi
  fi
  printf '%s\n' "$status" | evidence 20
elif command -v firewall-cmd >/dev/null 2>&1; then
  if [ "$(firewall-cmd --state 2>&1)" != running ]; then
    row firewall-rules fail "firewalld is not running"
  else
    for p in $INBOUND; do
      firewall-cmd --query-port="$p/tcp" >/dev/null 2>&1 ||
        { [ "$p" = 22 ] && firewall-cmd --query-service=ssh >/dev/null 2>&1; } || missing="$missing $p"
    done
    if [ -n "$missing" ]; then row firewall-rules fail "firewalld does not admit TCP$missing"
    else row firewall-rules pass "firewalld is running and admits TCP $INBOUND"; fi
  fi
  firewall-cmd --list-all 2>&1 | evidence 20
else
  row firewall-rules fail "no host firewall (ufw or firewalld) in the image"
fi

# Failed units, each with its last journal lines. None is excused by its
# name; only a unit that needs hardware this VM lacks is a warning. Read
# last, and no sooner than UNIT_GRACE_S seconds after systemd said it had
# settled: a service counts as started when its process starts, so one that
# dies on its first work (20 s in) fails after "running" — the other checks
# usually take that long, but not always.
UNIT_GRACE_S=30
waited=$(( $(date +%s) - settled_at ))
if [ "$waited" -lt "$UNIT_GRACE_S" ]; then sleep $(( UNIT_GRACE_S - waited )); fi
real=''
hardware=''
for u in $(systemctl list-units --failed --plain --no-legend --no-pager 2>/dev/null | awk '{print $1}'); do
  excused=''
  for h in $HARDWARE; do
    case "$u" in *"$h"*) excused=1 ;; esac
  done
  if [ -n "$excused" ]; then hardware="$hardware $u"; else real="$real $u"; fi
done
if [ -n "$real" ]; then
  row units fail "units failed:$real"
  for u in $real; do
    echo "$u:"
    journalctl -b -u "$u" -n 8 --no-pager -o cat 2>&1
  done | evidence 60
elif [ -n "$hardware" ]; then
  row units warn "only units that need hardware this VM lacks (GPU, InfiniBand) failed:$hardware"
else
  row units pass "no unit failed"
fi
