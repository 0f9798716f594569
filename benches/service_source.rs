//! The control plane's share of an endpoint change at 10,000 Services x 10
//! endpoints (issue 14), before the switch applies it (which the datapath's
//! `services` benchmark measures): the Kubernetes source's publish of the
//! Services and EndpointSlices after one slice changed (its stores' objects
//! taken, each converted or its last conversion reused, in key order), then
//! vswitchd's `ServiceIndex` turning the new set into the switch's frontend
//! changes. Not included: the source's 75 ms wait for more changes. Printed:
//! median and p99 of 200 changes.
//!
//! Run: `cargo bench --bench service_source`

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use vswitch::daemon::kube::{Converted, service_set};
use vswitch::daemon::manifests::Desired;

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;
const CHANGES: usize = 200;

fn service(i: usize) -> Service {
    let ip = format!("10.96.{}.{}", i / 250, 1 + i % 250);
    serde_json::from_value(json!({
        "metadata": {"name": format!("s{i}"), "namespace": "x", "uid": format!("uid-s{i}")},
        "spec": {
            "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": format!("s{i}")}, "sessionAffinity": "None",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
    }))
    .expect("a Service")
}

/// Service `i`'s slice; `ready` is the first endpoint's readiness.
fn slice(i: usize, ready: bool) -> EndpointSlice {
    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|e| {
            let n = i * ENDPOINTS + e;
            json!({
                "addresses": [format!("10.{}.{}.{}", 1 + n / 62500, (n / 250) % 250, 1 + n % 250)],
                "conditions": {"ready": e != 0 || ready, "serving": true, "terminating": false},
                "nodeName": format!("node-{}", n % 50),
                "targetRef": {"kind": "Pod", "namespace": "x", "name": format!("pod-{n}")},
            })
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("s{i}-abcde"), "namespace": "x", "uid": format!("uid-e{i}"),
            "labels": {"kubernetes.io/service-name": format!("s{i}")},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .expect("an EndpointSlice")
}

fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |q: usize| times[(times.len() * q / 100).min(times.len() - 1)];
    format!("median {:?}, p99 {:?}", at(50), at(99))
}

fn main() {
    let services: Vec<Arc<Service>> = (0..SERVICES).map(|i| Arc::new(service(i))).collect();
    let mut slices: Vec<Arc<EndpointSlice>> =
        (0..SERVICES).map(|i| Arc::new(slice(i, true))).collect();
    let mut converted = Converted::default();
    let mut index = policy::ServiceIndex::new();
    let (mut notes, mut stale) = (Vec::new(), 0);
    let t = Instant::now();
    let set = service_set(
        &services,
        &slices,
        None,
        &mut converted,
        &mut notes,
        &mut stale,
    );
    let first = t.elapsed();
    assert!(notes.is_empty(), "{notes:?}");
    let mut last = Desired {
        services: set.clone(),
        ..Desired::default()
    };
    let installed = vswitch::daemon::services::changes(&mut index, set, "node-0").len();
    assert_eq!(installed, SERVICES);
    let (mut source, mut both) = (Vec::new(), Vec::new());
    let mut ready = vec![true; SERVICES];
    for c in 0..CHANGES {
        // the watch event: one slice replaced in the store, its first
        // endpoint's readiness flipped
        let i = (c * 7919) % SERVICES;
        ready[i] = !ready[i];
        slices[i] = Arc::new(slice(i, ready[i]));
        let t = Instant::now();
        // what a publish does: the stores' objects, then the Services
        let (s, e) = (services.clone(), slices.clone());
        let set = service_set(&s, &e, Some(&last), &mut converted, &mut notes, &mut stale);
        source.push(t.elapsed());
        last.services = set.clone();
        let changes = vswitch::daemon::services::changes(&mut index, set, "node-0");
        both.push(t.elapsed());
        assert_eq!(changes.len(), 1, "change {c}: one frontend");
    }
    println!(
        "the first publish of {SERVICES} Services x {ENDPOINTS} endpoints: {first:?}; then one endpoint change, \
         the source's publish: {}; with vswitchd's frontend changes: {} ({CHANGES} changes)",
        summary(source),
        summary(both)
    );
}
