#!/usr/bin/env bash
# What an idle switch costs: vswitchd in a node namespace with N pods
# attached by vswitch-cni (each a network namespace and a TAP device), no
# traffic; after the attachments settle, the cores vswitchd uses (utime and
# stime of all its threads, from /proc) over a window. Target: under 1% of
# a core with 100 pods.
# Needs root and /usr/lib/cni/host-local. Usage:
#   benches/idle.sh [PODS] [SECONDS]   (default 100 pods, 20 s)
set -euo pipefail
cd "$(dirname "$0")/.."
pods=${1:-100}
secs=${2:-20}
. benches/support/prelude.sh
prelude python3 ip
pod_scratch idle
hz=$(getconf CLK_TCK)
cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
}

ip netns add $tag-node
ip -n $tag-node link set lo up
ip netns exec $tag-node "$bin/vswitchd" run --socket "$work/sock" --state-dir "$work/state" \
  2>"$work/vswitchd.log" &
daemon=$!
for _ in $(seq 200); do grep -q "vswitchd: ready" "$work/vswitchd.log" 2>/dev/null && break; sleep 0.05; done
conf="{\"cniVersion\":\"1.0.0\",\"name\":\"idle\",\"type\":\"vswitch-cni\",\"socket\":\"$work/sock\",
  \"ipam\":{\"type\":\"host-local\",\"dataDir\":\"$work/ipam\",\"ranges\":[[{\"subnet\":\"10.208.0.0/22\"}]]}}"
for i in $(seq "$pods"); do
  ip netns add $tag-p$i
  echo "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID=$tag-p$i CNI_NETNS=/var/run/netns/$tag-p$i \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=p$i" \
    "$bin/vswitch-cni" >/dev/null
done
ports=$("$bin/vswitchctl" ports --socket "$work/sock" --json |
  python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d["ports"] if isinstance(d, dict) else d))')
sleep 5 # the pods' own start-up traffic (IPv6 DAD, router solicitations) passes
ticks() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }
t0=$(ticks)
s0=$(date +%s.%N)
sleep "$secs"
t1=$(ticks)
s1=$(date +%s.%N)
python3 -c "
cores = ($t1 - $t0) / $hz / ($s1 - $s0)
print('vswitchd with %d pods attached (%d ports), idle for %.0f s: %.2f%% of a core (%d threads)' % (
    $pods, $ports, $s1 - $s0, cores * 100, len(__import__('os').listdir('/proc/$daemon/task'))))"
echo "($(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
