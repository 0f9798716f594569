//! `--mode engine`: probes answered by the compiled policy engine alone.
//! Fast and exact about NetworkPolicy; says nothing about packets. An
//! attempt to a cluster IP is judged as the connection to each endpoint the
//! Service translates it to (allowed when every one is; refused with none),
//! as policy judges the translated connection.

use policy::{Change, Cluster, Engine, Flow};

use super::format::External;
use super::run::{Attempt, Observed, Prober, ProberError};

#[derive(Default)]
pub struct EngineProber {
    engine: Engine,
}

impl Prober for EngineProber {
    fn start(&mut self, cluster: &Cluster, _externals: &[External]) -> Result<(), ProberError> {
        self.engine = Engine::from_cluster(cluster.clone())?;
        Ok(())
    }

    fn change(&mut self, change: &Change) -> Result<(), ProberError> {
        Ok(self.engine.apply(change.clone())?)
    }

    fn proxies_services(&self) -> bool {
        true
    }

    fn probe(&mut self, attempts: &[Attempt<'_>]) -> Vec<Observed> {
        attempts
            .iter()
            .map(|a| {
                let judge = |dst, dst_port| {
                    self.engine.explain(&Flow {
                        src: a.src,
                        dst,
                        protocol: a.protocol,
                        dst_port,
                    })
                };
                let Some(backends) = &a.backends else {
                    let e = judge(a.dst, a.port);
                    return Observed::Verdict {
                        allowed: e.allowed(),
                        detail: e.summary(),
                    };
                };
                if backends.is_empty() {
                    return Observed::Verdict {
                        allowed: false,
                        detail: "no endpoint: refused".into(),
                    };
                }
                let verdicts: Vec<_> = backends.iter().map(|b| (b, judge(b.ip, b.port))).collect();
                let allowed = verdicts.iter().all(|(_, e)| e.allowed());
                let (b, e) = verdicts
                    .iter()
                    .find(|(_, e)| e.allowed() != allowed)
                    .or(verdicts.iter().find(|(_, e)| !e.allowed()))
                    .unwrap_or(&verdicts[0]);
                Observed::Verdict {
                    allowed,
                    detail: format!("to {} {}:{}: {}", b.pod, b.ip, b.port, e.summary()),
                }
            })
            .collect()
    }
}
