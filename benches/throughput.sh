#!/usr/bin/env bash
# Throughput between two pods, side by side in one run:
#   vswitch  - vswitchd in a node namespace, pods wired by vswitch-cni
#              (host-local IPAM), TAP devices with virtio-net headers;
#   vswitch across nodes - two node namespaces joined by a veth pair (the
#              underlay), a vswitchd on each, one pod on each: VXLAN over
#              UDP, segmentation and checksums in software;
#   bridge   - a Linux bridge in a node namespace, pods on veth pairs;
#   kernel VXLAN - two node namespaces, each a Linux bridge with a veth pod
#              and a kernel VXLAN device to the other (flannel's layout).
# iperf3: TCP with one stream, TCP with four, and UDP with 64-byte
# payloads sent as fast as possible (packets per second received).
# Needs root, iperf3 and /usr/lib/cni/host-local. Usage:
#   benches/throughput.sh [SECONDS]   (default 5 per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
. benches/support/prelude.sh
prelude iperf3 python3 ip
work=$(mktemp -d)
tag=tp$$
cleanup() {
  for d in ${daemon:-} ${daemons:-}; do kill "$d" 2>/dev/null && wait "$d" 2>/dev/null; done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns"
  done
  rm -rf "$work"
}
trap cleanup EXIT

# one iperf3 run from $1 to address $2 with more flags; prints the figure
measure() {
  local ns=$1 dst=$2; shift 2
  ip netns exec "$ns" iperf3 -c "$dst" -t "$secs" -J "$@" > "$work/out.json"
  python3 - "$work/out.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
if "error" in r:
    print("error: " + r["error"]); sys.exit(0)
e = r["end"]
if r["start"]["test_start"]["protocol"] == "UDP":
    s = e["sum"]  # packets sent; lost as the receiver counted them
    got = s["packets"] - s["lost_packets"]
    print("%.0f kpps (%.0f%% lost)" % (got / s["seconds"] / 1e3, s["lost_percent"]))
else:
    print("%.2f Gbit/s" % (e["sum_received"]["bits_per_second"] / 1e9))
EOF
}

run_suite() {
  local label=$1 client=$2 server=$3 dst=$4
  ip netns exec "$server" iperf3 -s -D >/dev/null
  sleep 0.3
  local one four udp
  one=$(measure "$client" "$dst")
  four=$(measure "$client" "$dst" -P 4)
  udp=$(measure "$client" "$dst" -u -l 64 -b 0)
  printf "%-34s %16s %16s %22s\n" "$label" "$one" "$four" "$udp"
}

printf "%-34s %16s %16s %22s\n" "path" "TCP 1 stream" "TCP 4 streams" "UDP 64 B"

# --- vswitch
ip netns add $tag-node
ip -n $tag-node link set lo up
ip netns exec $tag-node "$bin/vswitchd" run --socket "$work/sock" --state-dir "$work/state" \
  2>"$work/vswitchd.log" &
daemon=$!
for _ in $(seq 100); do [ -S "$work/sock" ] && break; sleep 0.05; done
conf="{\"cniVersion\":\"1.0.0\",\"name\":\"tp\",\"type\":\"vswitch-cni\",\"socket\":\"$work/sock\",
  \"ipam\":{\"type\":\"host-local\",\"dataDir\":\"$work/ipam\",\"ranges\":[[{\"subnet\":\"10.203.0.0/24\"}]]}}"
addrs=()
for p in a b; do
  ip netns add $tag-$p
  ip -n $tag-$p link set lo up
  out=$(echo "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID=$tag-$p CNI_NETNS=/var/run/netns/$tag-$p \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=$p" "$bin/vswitch-cni")
  addrs+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')")
done
run_suite "vswitch (TAP + userspace switch)" $tag-a $tag-b "${addrs[1]}"

# --- vswitch, the two pods on two nodes
ip netns add $tag-n1
ip netns add $tag-n2
ip -n $tag-n1 link add u1 type veth peer name u2 netns $tag-n2
mkdir -p "$work/m"
for i in 1 2; do
  ip -n $tag-n$i link set lo up
  ip -n $tag-n$i addr add 192.168.205.$i/24 dev u$i
  ip -n $tag-n$i link set u$i up
  printf -- '---\napiVersion: v1\nkind: Node\nmetadata: {name: n%s}\nspec: {podCIDRs: [10.205.%s.0/24]}\nstatus: {addresses: [{type: InternalIP, address: 192.168.205.%s}]}\n' \
    $i $i $i >> "$work/m/nodes.yaml"
done
daemons=""
for i in 1 2; do
  ip netns exec $tag-n$i "$bin/vswitchd" run --socket "$work/s$i" --state-dir "$work/st$i" \
    --manifests "$work/m" --node-name n$i --overlay-addr 192.168.205.$i 2>"$work/n$i.log" &
  daemons="$daemons $!"
  for _ in $(seq 100); do [ -S "$work/s$i" ] && break; sleep 0.05; done
done
xaddrs=()
for i in 1 2; do
  conf="{\"cniVersion\":\"1.1.0\",\"name\":\"tp\",\"type\":\"vswitch-cni\",\"socket\":\"$work/s$i\",
    \"ipam\":{\"type\":\"host-local\",\"dataDir\":\"$work/ipam$i\",\"ranges\":[[{\"subnet\":\"10.205.$i.0/24\"}]]}}"
  ip netns add $tag-x$i
  ip -n $tag-x$i link set lo up
  out=$(echo "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID=$tag-x$i CNI_NETNS=/var/run/netns/$tag-x$i \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=x$i" "$bin/vswitch-cni")
  xaddrs+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')")
done
run_suite "vswitch across two nodes (VXLAN)" $tag-x1 $tag-x2 "${xaddrs[1]}"

# --- Linux bridge and veth pairs
ip netns add $tag-bnode
ip -n $tag-bnode link add br0 type bridge
ip -n $tag-bnode link set br0 up
i=1
for p in ba bb; do
  i=$((i + 1))
  ip netns add $tag-$p
  ip -n $tag-$p link set lo up
  ip -n $tag-bnode link add $p type veth peer name eth0 netns $tag-$p
  ip -n $tag-bnode link set $p master br0 up
  ip -n $tag-$p addr add 10.204.0.$i/24 dev eth0
  ip -n $tag-$p link set eth0 up
done
run_suite "Linux bridge + veth" $tag-ba $tag-bb 10.204.0.3

# --- the kernel's own overlay: on each of two nodes a Linux bridge with a
# veth pod and a VXLAN device (VNI 1, UDP 4789) to the other node
ip netns add $tag-k1
ip netns add $tag-k2
ip -n $tag-k1 link add w1 type veth peer name w2 netns $tag-k2
for i in 1 2; do
  o=$((3 - i))
  ip -n $tag-k$i link set lo up
  ip -n $tag-k$i addr add 192.168.206.$i/24 dev w$i
  ip -n $tag-k$i link set w$i up
  ip -n $tag-k$i link add br0 type bridge
  ip -n $tag-k$i link set br0 up
  ip -n $tag-k$i link add vx0 type vxlan id 1 local 192.168.206.$i remote 192.168.206.$o dstport 4789
  ip -n $tag-k$i link set vx0 master br0 up
  ip netns add $tag-kp$i
  ip -n $tag-kp$i link set lo up
  ip -n $tag-k$i link add kp$i type veth peer name eth0 netns $tag-kp$i
  ip -n $tag-k$i link set kp$i master br0 up
  ip -n $tag-kp$i link set eth0 mtu 1450
  ip -n $tag-kp$i addr add 10.206.0.$i/24 dev eth0
  ip -n $tag-kp$i link set eth0 up
done
run_suite "Linux bridge + kernel VXLAN, 2 nodes" $tag-kp1 $tag-kp2 10.206.0.2
echo "($secs s per figure; $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
