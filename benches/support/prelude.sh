# What both pod benchmarks (throughput.sh, noisy_neighbour.sh) do first,
# sourced from the repository's root: `prelude TOOL...` skips the run
# (exit 0) unless root and every tool and the host-local IPAM plugin are
# there, builds the binaries when cargo is at hand (under sudo, which
# resets PATH, those of an earlier `cargo build --release` are used), and
# sets `bin` to the folder that holds them.
prelude() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "SKIPPED: $tool is missing"; exit 0; }
  done
  [ "$(id -u)" = 0 ] || { echo "SKIPPED: needs root"; exit 0; }
  [ -x /usr/lib/cni/host-local ] || { echo "SKIPPED: /usr/lib/cni/host-local is missing"; exit 0; }
  if command -v cargo >/dev/null; then
    cargo build --release -q -p vswitch -p vswitch-cni --bins
  fi
  bin=${CARGO_TARGET_DIR:-$PWD/target}/release
  for b in vswitchd vswitchctl vswitch-cni; do
    [ -x "$bin/$b" ] || {
      echo "error: target/release/$b is missing: run cargo build --release first" >&2; exit 1; }
  done
}

# `pod_scratch PREFIX`: a scratch folder ($work) and a prefix for network
# namespaces ($tag). On exit, or when killed, the script's own `cleanup`
# runs first (if it has one: its daemons), then every namespace named
# $tag... goes with its processes, and the folder.
pod_scratch() {
  work=$(mktemp -d)
  tag=$1$$
  trap 'if declare -F cleanup >/dev/null; then cleanup || true; fi; scratch_cleanup' EXIT
  trap "exit 130" INT TERM
}

scratch_cleanup() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns"
  done
  rm -rf "$work"
}
