#!/usr/bin/env python3
"""Writes seed corpora for the `control` and `manifest` fuzz targets into
corpus/ (git ignores it): one request line per control-socket operation, and
the repository's manifests, alone, paired with an edited second version
(split at a line `#---next`, see fuzz_targets/manifest.rs), with a typo and
with a YAML syntax error."""
import glob, json, os

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.normpath(os.path.join(here, "..", ".."))

def write(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

key = {"container_id": "c" * 64, "ifname": "eth0"}
requests = [
    {"op": "status"}, {"op": "list"}, {"op": "ports"},
    {"op": "flows", "limit": 10}, {"op": "conntrack", "limit": 5},
    {"op": "del", **key}, {"op": "check", **key},
    {"op": "gc", "valid": [key]},
    {"op": "explain", "src": "10.1.0.1", "dst": "10.1.0.2", "port": 80, "protocol": "TCP"},
    {"op": "add", **key, "netns": "/var/run/netns/p", "pod_namespace": "ns", "pod_name": "p",
     "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1"}],
     "routes": [{"dst": "0.0.0.0/0"}], "mtu": 1450},
]
for i, r in enumerate(requests):
    write("control", "req%02d" % i, (json.dumps(r) + "\n").encode())

files = sorted(glob.glob(os.path.join(root, "tests", "netpol", "*.yaml")))
files += sorted(glob.glob(os.path.join(root, "deploy", "examples", "*", "*.yaml")))
for i, path in enumerate(files):
    text = open(path).read()
    write("manifest", "m%03d" % i, text.encode())
    edits = {
        "typo": text.replace("podSelector", "podSelectr", 1),
        "syntax": text + "\n  ingress: [{from: [\n",
        "same": text,
    }
    for name, second in edits.items():
        write("manifest", "m%03d-%s" % (i, name), (text + "\n#---next\n" + second).encode())
print("seeds written to", os.path.join(here, "corpus"))
