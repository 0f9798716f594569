//! Compact, pointer-free forms of ports for the verdict path: port names
//! interned to numbers, and short lists stored inline. A verdict on a large
//! cluster is bound by cache misses, and every pointer it follows (a boxed
//! list, a string) is one more.

use rustc_hash::FxHashMap;

use crate::model::{ContainerPort, Protocol};
use crate::netpol::{PortMatch, PortRule};

/// A list of `Copy` items, inline up to `N`, on the heap beyond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InlineVec<T: Copy + Default, const N: usize> {
    Inline { len: u8, items: [T; N] },
    Heap(Box<[T]>),
}

impl<T: Copy + Default, const N: usize> InlineVec<T, N> {
    pub(crate) fn from_iter(iter: impl IntoIterator<Item = T>) -> Self {
        let v: Vec<T> = iter.into_iter().collect();
        if v.len() <= N {
            let mut items = [T::default(); N];
            items[..v.len()].copy_from_slice(&v);
            InlineVec::Inline {
                len: v.len() as u8,
                items,
            }
        } else {
            InlineVec::Heap(v.into_boxed_slice())
        }
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        match self {
            InlineVec::Inline { len, items } => &items[..*len as usize],
            InlineVec::Heap(b) => b,
        }
    }
}

/// Interned port names: the same name has the same number in one engine.
#[derive(Debug, Clone, Default)]
pub(crate) struct PortNames {
    ids: FxHashMap<String, u32>,
    names: Vec<String>,
}

impl PortNames {
    pub(crate) fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// A pod's named container port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PortSlot {
    pub name: u32,
    pub port: u16,
    pub protocol: u8,
}

/// The named container ports of a pod (unnamed ones never match anything).
pub(crate) type PodPorts = InlineVec<PortSlot, 3>;

pub(crate) fn pod_ports(names: &mut PortNames, ports: &[ContainerPort]) -> PodPorts {
    PodPorts::from_iter(ports.iter().filter_map(|p| {
        p.name.as_ref().map(|n| PortSlot {
            name: names.intern(n),
            port: p.port,
            protocol: p.protocol.number(),
        })
    }))
}

const ALL: u8 = 0;
const RANGE: u8 = 1;
const NAMED: u8 = 2;

/// One port entry of a compiled rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CPort {
    protocol: u8,
    kind: u8,
    lo: u16,
    hi: u16,
    name: u32,
}

impl CPort {
    pub(crate) fn new(names: &mut PortNames, rule: &PortRule) -> CPort {
        let protocol = rule.protocol.number();
        match &rule.port {
            PortMatch::All => CPort {
                protocol,
                kind: ALL,
                ..CPort::default()
            },
            PortMatch::Range(lo, hi) => CPort {
                protocol,
                kind: RANGE,
                lo: *lo,
                hi: *hi,
                name: 0,
            },
            PortMatch::Named(n) => CPort {
                protocol,
                kind: NAMED,
                name: names.intern(n),
                ..CPort::default()
            },
        }
    }

    /// An entry that matches nothing (what is left of a rule whose every
    /// entry was not understood).
    pub(crate) fn nothing() -> CPort {
        CPort {
            protocol: 0,
            kind: RANGE,
            lo: 1,
            hi: 0,
            name: 0,
        }
    }

    /// Does `(protocol, port)` towards a pod with `dst` ports match?
    #[inline]
    pub(crate) fn matches(&self, protocol: u8, port: u16, dst: Option<&PodPorts>) -> bool {
        if protocol != self.protocol {
            return false;
        }
        match self.kind {
            ALL => true,
            RANGE => self.lo <= port && port <= self.hi,
            _ => dst.is_some_and(|d| {
                d.as_slice()
                    .iter()
                    .find(|s| s.name == self.name && s.protocol == protocol)
                    .is_some_and(|s| s.port == port)
            }),
        }
    }

    /// The entry in the model's terms (for dumps).
    pub(crate) fn describe(&self, names: &PortNames) -> String {
        let proto = Protocol::from_number(self.protocol);
        match self.kind {
            ALL => format!("*/{proto}"),
            RANGE => format!("{}-{}/{proto}", self.lo, self.hi),
            _ => format!("{}/{proto}", names.name(self.name)),
        }
    }
}

/// The port entries of a compiled rule; empty: every port of every protocol.
pub(crate) type RulePorts = InlineVec<CPort, 2>;
