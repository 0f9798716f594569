#!/usr/bin/env bash
# Two pods, side by side in one run, each vswitch path with a NetworkPolicy
# on the server pod (ingress from the client's app only):
#   vswitch  - vswitchd in a node namespace, pods wired by vswitch-cni
#              (host-local IPAM), TAP devices with virtio-net headers;
#   TAP relay - the ceiling of any switch on TAPs: two pods' TAPs joined
#              by benches/tap_relay.rs, which copies frames (offloads and
#              all) and does nothing else, with the same busy poll;
#   bridge   - a Linux bridge in a node namespace, pods on veth pairs;
#   vswitch across nodes - two node namespaces joined by a veth pair (the
#              underlay), a vswitchd on each, one pod on each: VXLAN over
#              UDP, segmentation and checksums in software;
#   TAP relay across nodes - the ceiling of any overlay on TAPs and UDP
#              sockets: on each node a relay joins a pod's TAP to a UDP
#              socket, and whole 64 kB frames cross a 64 kB-MTU underlay
#              (nothing cut, nothing checksummed);
#   kernel VXLAN - two node namespaces, each a Linux bridge with a veth pod
#              and a kernel VXLAN device to the other (flannel's layout).
# Each path: iperf3 TCP with one stream and with four (and the segments
# the sender retransmitted: a switch that drops shows here), UDP with 64-byte
# payloads sent as fast as possible (packets per second received, and
# lost); sockperf ping-pong with 64-byte messages over TCP and over UDP
# (round trip, average and 99th percentile); ping (average round trip).
# Beside each vswitch figure, the cores vswitchd used meanwhile (utime and
# stime from /proc), and per Gbit/s or per 100 kpps. Last, every figure as
# a ratio: vswitch to the bridge, vswitch across nodes to kernel VXLAN,
# vswitch to the relay and the relay to the bridge (what the TAP path
# itself costs, beyond anything a switch does).
# Needs root, iperf3, sockperf, ping and /usr/lib/cni/host-local. Usage:
#   benches/throughput.sh [SECONDS]   (default 5 per measurement)
# VSWITCHD_ARGS adds options to every vswitchd (e.g. "--busy-poll-us 0"),
# RELAY_ARGS to the relay (the same option).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
. benches/support/prelude.sh
prelude iperf3 sockperf ping python3 ip
if command -v cargo >/dev/null; then cargo build --release -q --example tap_relay; fi
relay_bin=$bin/examples/tap_relay
[ -x "$relay_bin" ] || {
  echo "error: $relay_bin is missing: run cargo build --release --example tap_relay" >&2; exit 1; }
pod_scratch tp
hz=$(getconf CLK_TCK)
cleanup() {
  for d in ${daemon:-} ${relay:-} ${daemons:-} ${relays:-}; do kill "$d" 2>/dev/null && wait "$d" 2>/dev/null; done
}

# CPU ticks (user + system) of the processes named, all their threads
ticks() {
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}

# record PATH METRIC VALUE [CORES]: one figure, into the run's results
record() {
  echo "$1|$2|$3|${4:-}" >> "$work/results"
}

# figures of one iperf3 run as "value extra" (Gbit/s and TCP segments
# retransmitted, or kpps and % lost)
iperf_figure() {
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
if "error" in r:
    print("iperf3: " + r["error"], file=sys.stderr); print("nan nan"); sys.exit(0)
e = r["end"]
if r["start"]["test_start"]["protocol"] == "UDP":
    s = e["sum"]
    got = s["packets"] - s["lost_packets"]
    print("%.1f %.1f" % (got / s["seconds"] / 1e3, s["lost_percent"]))
else:
    print("%.3f %d" % (e["sum_received"]["bits_per_second"] / 1e9, e["sum_sent"].get("retransmits", 0)))
EOF
}

# sockperf's round trip average and 99th percentile, in microseconds
sockperf_figure() {
  python3 -c '
import re, sys
t = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[1]).read())
avg = re.search(r"avg-(?:latency|rtt)=([0-9.]+)", t)
p99 = re.search(r"percentile 99\.000 =\s*([0-9.]+)", t)
print(avg.group(1) if avg else "nan", p99.group(1) if p99 else "nan")' "$1"
}

# timed COMMAND...: runs it; leaves in $cores the cores the processes in
# the caller's $pids used meanwhile (empty when there are none)
timed() {
  local t0 t1 s0 s1
  cores=""
  [ ${#pids[@]} -gt 0 ] && { t0=$(ticks "${pids[@]}"); s0=$(date +%s.%N); }
  "$@"
  if [ ${#pids[@]} -gt 0 ]; then
    t1=$(ticks "${pids[@]}"); s1=$(date +%s.%N)
    cores=$(python3 -c "print('%.3f' % (($t1 - $t0) / $hz / ($s1 - $s0)))")
  fi
}

# run_suite LABEL CLIENT-NS SERVER-NS SERVER-ADDR [PIDS...]: every figure
run_suite() {
  local label=$1 client=$2 server=$3 dst=$4
  shift 4
  local pids=("$@") v x cores
  ip netns exec "$server" iperf3 -s -D >/dev/null
  ip netns exec "$server" sockperf server -i "$dst" -p 11111 --tcp >/dev/null 2>&1 &
  ip netns exec "$server" sockperf server -i "$dst" -p 11112 >/dev/null 2>&1 &
  sleep 0.5
  for m in "tcp1" "tcp4:-P 4" "udp64:-u -l 64 -b 0"; do
    local name=${m%%:*} flags=""
    [ "$name" != "$m" ] && flags=${m#*:}
    # shellcheck disable=SC2086
    timed ip netns exec "$client" iperf3 -c "$dst" -t "$secs" -J $flags > "$work/out.json" || true
    read -r v x < <(iperf_figure "$work/out.json")
    record "$label" "$name" "$v" "$cores"
    if [ "$name" = udp64 ]; then record "$label" udp64-lost "$x"; else record "$label" "$name-retr" "$x"; fi
  done
  for proto in tcp udp; do
    local port=11112 opt=""
    [ $proto = tcp ] && { port=11111; opt=--tcp; }
    # shellcheck disable=SC2086
    timed ip netns exec "$client" sockperf ping-pong -i "$dst" -p $port $opt -m 64 -t "$secs" \
      --full-rtt > "$work/sp.out" 2>&1 || true
    read -r v x < <(sockperf_figure "$work/sp.out")
    record "$label" "$proto-rr-avg" "$v" "$cores"
    record "$label" "$proto-rr-p99" "$x"
  done
  v=$(ip netns exec "$client" ping -q -c 200 -i 0.01 "$dst" | sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
  record "$label" ping "${v:-nan}"
  ip netns pids "$server" | xargs -r kill 2>/dev/null || true
  sleep 0.2
  echo "measured: $label" >&2
}

# cni_add NS CONF NAME: attaches a pod; prints its IPv4 address
cni_add() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  echo "$2" | CNI_COMMAND=ADD CNI_CONTAINERID="$1" CNI_NETNS="/var/run/netns/$1" \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$3" "$bin/vswitch-cni" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])'
}

# the policy on the server: ingress from the client's app only
policy_manifests() {
  cat > "$1/policy.yaml" <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-client, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
EOF
}

# pod_manifest DIR NAME APP [NODE ADDRESS]: a pod's Pod object (on one
# node the switch learns the address from the CNI call, by name)
pod_manifest() {
  local spec="{containers: [{name: c, image: x}]}" status=""
  [ $# -gt 3 ] && { spec="{nodeName: $4, containers: [{name: c, image: x}]}"
    status=$'\nstatus: {podIPs: [{ip: "'"$5"'"}]}'; }
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: default, labels: {app: %s}}\nspec: %s%s\n' \
    "$2" "$3" "$spec" "$status" > "$1/pod-$2.yaml"
}

# wait_ready LOG [PROGRAM]: until PROGRAM (vswitchd, or tap_relay) has
# written its ready line to LOG
wait_ready() {
  local who=${2:-vswitchd} line="vswitchd: ready"
  [ "$who" = tap_relay ] && line=ready
  for _ in $(seq 200); do grep -q "$line" "$1" 2>/dev/null && return; sleep 0.05; done
  echo "$who did not start:" >&2; cat "$1" >&2; exit 1
}

# wait_policy CLIENT-NS OTHER-NS ADDR: the policy must be in force before
# measuring: the client reaches the server's iperf3, a third pod does not
wait_policy() {
  local probe='
import socket, sys
s = socket.socket(); s.settimeout(0.3)
try:
    s.connect((sys.argv[1], 5201)); sys.exit(0)
except OSError:
    sys.exit(1)'
  for _ in $(seq 100); do
    if ip netns exec "$1" python3 -c "$probe" "$3" && ! ip netns exec "$2" python3 -c "$probe" "$3"; then
      return
    fi
    sleep 0.1
  done
  echo "the NetworkPolicy did not take effect" >&2; exit 1
}

# --- vswitch, one node
mkdir -p "$work/m"
policy_manifests "$work/m"
pod_manifest "$work/m" a client
pod_manifest "$work/m" b server
pod_manifest "$work/m" c other
ip netns add $tag-node
ip -n $tag-node link set lo up
ip netns exec $tag-node "$bin/vswitchd" run --socket "$work/sock" --state-dir "$work/state" \
  --manifests "$work/m" ${VSWITCHD_ARGS:-} 2>"$work/vswitchd.log" &
daemon=$!
wait_ready "$work/vswitchd.log"
conf="{\"cniVersion\":\"1.0.0\",\"name\":\"tp\",\"type\":\"vswitch-cni\",\"socket\":\"$work/sock\",
  \"ipam\":{\"type\":\"host-local\",\"dataDir\":\"$work/ipam\",\"ranges\":[[{\"subnet\":\"10.203.0.0/24\"}]]}}"
a=$(cni_add $tag-a "$conf" a)
b=$(cni_add $tag-b "$conf" b)
cni_add $tag-c "$conf" c >/dev/null
ip netns exec $tag-b iperf3 -s -D >/dev/null
wait_policy $tag-a $tag-c "$b"
ip netns pids $tag-b | xargs -r kill 2>/dev/null || true
sleep 0.2
run_suite "vswitch + NetworkPolicy" $tag-a $tag-b "$b" "$daemon"

# --- the ceiling: two TAPs joined by a relay that only copies frames
ip netns add $tag-rnode
# shellcheck disable=SC2086
ip netns exec $tag-rnode "$relay_bin" ra rb ${RELAY_ARGS:-} > "$work/relay.log" 2>&1 &
relay=$!
wait_ready "$work/relay.log" tap_relay
i=1
for p in ra rb; do
  i=$((i + 1))
  ip netns add $tag-$p
  ip -n $tag-$p link set lo up
  ip -n $tag-rnode link set $p netns $tag-$p
  ip -n $tag-$p link set $p name eth0
  ip -n $tag-$p addr add 10.207.0.$i/24 dev eth0
  ip -n $tag-$p link set eth0 up
done
run_suite "TAP relay (ceiling, no policy)" $tag-ra $tag-rb 10.207.0.3 "$relay"

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

# --- vswitch, the two pods on two nodes
ip netns add $tag-n1
ip netns add $tag-n2
ip -n $tag-n1 link add u1 type veth peer name u2 netns $tag-n2
mkdir -p "$work/x"
policy_manifests "$work/x"
for i in 1 2; do
  ip -n $tag-n$i link set lo up
  ip -n $tag-n$i addr add 192.168.205.$i/24 dev u$i
  ip -n $tag-n$i link set u$i up
  printf -- '---\napiVersion: v1\nkind: Node\nmetadata: {name: n%s}\nspec: {podCIDRs: [10.205.%s.0/24]}\nstatus: {addresses: [{type: InternalIP, address: 192.168.205.%s}]}\n' \
    $i $i $i >> "$work/x/nodes.yaml"
done
daemons=""
for i in 1 2; do
  ip netns exec $tag-n$i "$bin/vswitchd" run --socket "$work/s$i" --state-dir "$work/st$i" \
    --manifests "$work/x" --node-name n$i --overlay-addr 192.168.205.$i ${VSWITCHD_ARGS:-} 2>"$work/n$i.log" &
  daemons="$daemons $!"
  wait_ready "$work/n$i.log"
done
xaddrs=()
for i in 1 2 3; do
  n=$(( i == 3 ? 1 : i ))
  conf="{\"cniVersion\":\"1.1.0\",\"name\":\"tp\",\"type\":\"vswitch-cni\",\"socket\":\"$work/s$n\",
    \"ipam\":{\"type\":\"host-local\",\"dataDir\":\"$work/ipam$n\",\"ranges\":[[{\"subnet\":\"10.205.$n.0/24\"}]]}}"
  xaddrs+=("$(cni_add $tag-x$i "$conf" x$i)")
done
pod_manifest "$work/x" x1 client n1 "${xaddrs[0]}"
pod_manifest "$work/x" x2 server n2 "${xaddrs[1]}"
pod_manifest "$work/x" x3 other n1 "${xaddrs[2]}"
ip netns exec $tag-x2 iperf3 -s -D >/dev/null
wait_policy $tag-x1 $tag-x3 "${xaddrs[1]}"
ip netns pids $tag-x2 | xargs -r kill 2>/dev/null || true
sleep 0.2
# shellcheck disable=SC2086
run_suite "vswitch + NetworkPolicy, 2 nodes (VXLAN)" $tag-x1 $tag-x2 "${xaddrs[1]}" $daemons

# --- the overlay's ceiling: on each of two nodes a relay joins a pod's TAP
# to a UDP socket; each frame, 64 kB ones whole, is one datagram on an
# underlay with a 64 kB MTU (the pods' gso_max_size keeps a frame within a
# datagram)
ip netns add $tag-r1
ip netns add $tag-r2
ip -n $tag-r1 link add v1 type veth peer name v2 netns $tag-r2
relays=""
for i in 1 2; do
  o=$((3 - i))
  ip -n $tag-r$i link set lo up
  ip -n $tag-r$i link set v$i mtu 65535
  ip -n $tag-r$i addr add 192.168.207.$i/24 dev v$i
  ip -n $tag-r$i link set v$i up
  # shellcheck disable=SC2086
  ip netns exec $tag-r$i "$relay_bin" --udp 192.168.207.$i:4789 192.168.207.$o:4789 rp \
    ${RELAY_ARGS:-} > "$work/relay$i.log" 2>&1 &
  relays="$relays $!"
  wait_ready "$work/relay$i.log" tap_relay
  ip netns add $tag-rp$i
  ip -n $tag-rp$i link set lo up
  ip -n $tag-r$i link set rp netns $tag-rp$i
  ip -n $tag-rp$i link set rp name eth0
  ip -n $tag-rp$i link set eth0 mtu 1450 gso_max_size 60000
  ip -n $tag-rp$i addr add 10.208.0.$i/24 dev eth0
  ip -n $tag-rp$i link set eth0 up
done
# shellcheck disable=SC2086
run_suite "TAP relay across nodes (ceiling, no policy)" $tag-rp1 $tag-rp2 10.208.0.2 $relays

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

# --- the table, then the ratios
python3 - "$work/results" "$secs" <<'EOF'
import sys
rows, order = {}, []
for line in open(sys.argv[1]):
    path, metric, value, cores = line.rstrip("\n").split("|")
    if path not in rows:
        rows[path] = {}
        order.append(path)
    rows[path][metric] = (float(value), float(cores) if cores else None)
cols = [("tcp1", "TCP 1 stream", "Gbit/s"), ("tcp1-retr", "retransmitted", "segments"),
        ("tcp4", "TCP 4 streams", "Gbit/s"), ("tcp4-retr", "retransmitted", "segments"),
        ("udp64", "UDP 64 B", "kpps"), ("udp64-lost", "UDP lost", "%"),
        ("tcp-rr-avg", "TCP RR avg", "us"), ("tcp-rr-p99", "TCP RR p99", "us"),
        ("udp-rr-avg", "UDP RR avg", "us"), ("udp-rr-p99", "UDP RR p99", "us"),
        ("ping", "ping avg", "ms")]
def cell(r, k):
    v, c = r.get(k, (float("nan"), None))
    s = ("%d" if k.endswith("-retr") else "%.3g") % v if v == v else "-"
    if c is not None:
        per = {"tcp1": v, "tcp4": v, "udp64": v / 100}.get(k)
        s += " (%.2f cores%s)" % (c, ", %.2f per %s" % (c / per, "Gbit/s" if k != "udp64" else "100 kpps")
                                   if per else "")
    return s
print("%-42s" % "path", " | ".join("%s (%s)" % (n, u) for _, n, u in cols))
for p in order:
    print("%-42s" % p, " | ".join(cell(rows[p], k) for k, _, _ in cols))
print()
pairs = [("vswitch + NetworkPolicy", "Linux bridge + veth"),
         ("vswitch + NetworkPolicy", "TAP relay (ceiling, no policy)"),
         ("TAP relay (ceiling, no policy)", "Linux bridge + veth"),
         ("vswitch + NetworkPolicy, 2 nodes (VXLAN)", "Linux bridge + kernel VXLAN, 2 nodes"),
         ("vswitch + NetworkPolicy, 2 nodes (VXLAN)", "TAP relay across nodes (ceiling, no policy)"),
         ("TAP relay across nodes (ceiling, no policy)", "Linux bridge + kernel VXLAN, 2 nodes")]
print("ratios (higher is better for rates, lower for times):")
for a, b in pairs:
    if a not in rows or b not in rows:
        continue
    parts = []
    for k, n, unit in cols:
        if unit in ("%", "segments"):  # losses, not rates or times
            continue
        x, y = rows[a].get(k, (float("nan"),))[0], rows[b].get(k, (float("nan"),))[0]
        parts.append("%s %.2fx" % (n, x / y) if y and x == x and y == y else "%s -" % n)
    print("  %s / %s: %s" % (a, b, ", ".join(parts)))
EOF
echo "($secs s per figure; $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
