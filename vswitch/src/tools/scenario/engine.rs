//! `--mode engine`: probes answered by the compiled policy engine alone.
//! Fast and exact about NetworkPolicy; says nothing about packets.

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

    fn probe(&mut self, attempts: &[Attempt<'_>]) -> Vec<Observed> {
        attempts
            .iter()
            .map(|a| {
                let flow = Flow {
                    src: a.src,
                    dst: a.dst,
                    protocol: a.protocol,
                    dst_port: a.port,
                };
                let e = self.engine.explain(&flow);
                Observed::Verdict {
                    allowed: e.allowed(),
                    detail: e.summary(),
                }
            })
            .collect()
    }
}
