//! Outcome counters. Every packet the datapath receives bumps exactly one
//! outcome, on its port and on the datapath, so that the outcomes of a port
//! add up to the packets it received (tests assert it).

use std::fmt;

/// What happened to one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Forwarded by a flow-cache hit.
    FastForward,
    /// Forwarded after the slow path (parse, conntrack, policy).
    SlowForward,
    /// Answered by the switch itself (ARP, NDP, ICMP error).
    Replied,
    /// Dropped: NetworkPolicy denies the flow.
    PolicyDeny,
    /// Dropped: source MAC or IP is not the port's.
    Spoofed,
    /// Dropped: the frame does not parse.
    Malformed,
    /// Dropped: no port serves the destination.
    NoRoute,
    /// Dropped: the conntrack table is full, the new flow was refused.
    TableFull,
    /// Dropped: TTL or hop limit expired (an ICMP error went back).
    TtlExpired,
    /// Dropped: a non-first fragment whose first fragment is unknown.
    FragmentUnknown,
    /// Dropped: not a connection start and not part of a tracked one
    /// (an echo reply or an ICMP error nobody asked for).
    Untracked,
    /// Dropped: the port's pod has no policy generation installed yet.
    NotReady,
    /// Dropped: traffic the switch does not carry (other ethertypes,
    /// multicast and broadcast that it does not answer, DAD probes).
    Unsupported,
    /// Dropped: an overlay packet from an address that is no known node,
    /// or whose source is not the sending node's (pod CIDR or address).
    Forged,
    /// Dropped: the destination is in the cluster's pod range but on no
    /// known node (a node that left).
    NoNode,
    /// Dropped: too big for its output port (the overlay, a local port's
    /// MTU) and not to be fragmented: an ICMP "fragmentation needed" /
    /// "packet too big" went back, or (IPv4 without DF to a local port,
    /// which the switch does not fragment) nothing did.
    TooBig,
    /// Dropped: the sending pod holds its share of the conntrack table,
    /// all of it answered; its new flow was refused.
    ShareFull,
    /// Dropped: an ICMP error quoting a tracked connection from where no
    /// error about it can come (neither the quoted peer nor the way to it).
    ForgedIcmp,
    /// Answered: a new connection to a Service without a usable endpoint,
    /// refused at once (TCP RST, ICMP port unreachable).
    Refused,
}

impl Outcome {
    pub const ALL: [Outcome; 19] = [
        Outcome::FastForward,
        Outcome::SlowForward,
        Outcome::Replied,
        Outcome::PolicyDeny,
        Outcome::Spoofed,
        Outcome::Malformed,
        Outcome::NoRoute,
        Outcome::TableFull,
        Outcome::TtlExpired,
        Outcome::FragmentUnknown,
        Outcome::Untracked,
        Outcome::NotReady,
        Outcome::Unsupported,
        Outcome::Forged,
        Outcome::NoNode,
        Outcome::TooBig,
        Outcome::ShareFull,
        Outcome::ForgedIcmp,
        Outcome::Refused,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::FastForward => "fast_forward",
            Outcome::SlowForward => "slow_forward",
            Outcome::Replied => "replied",
            Outcome::PolicyDeny => "policy_deny",
            Outcome::Spoofed => "spoofed",
            Outcome::Malformed => "malformed",
            Outcome::NoRoute => "no_route",
            Outcome::TableFull => "table_full",
            Outcome::TtlExpired => "ttl_expired",
            Outcome::FragmentUnknown => "fragment_unknown",
            Outcome::Untracked => "untracked",
            Outcome::NotReady => "not_ready",
            Outcome::Unsupported => "unsupported",
            Outcome::Forged => "forged",
            Outcome::NoNode => "no_node",
            Outcome::TooBig => "too_big",
            Outcome::ShareFull => "share_full",
            Outcome::ForgedIcmp => "forged_icmp",
            Outcome::Refused => "refused",
        }
    }

    pub fn is_forward(self) -> bool {
        matches!(self, Outcome::FastForward | Outcome::SlowForward)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Packet and byte counters of one port (or of the whole datapath).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub outcomes: [u64; Outcome::ALL.len()],
}

impl Counters {
    /// Adds another set of counters to these (totals over datapaths).
    pub fn add(&mut self, o: &Counters) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        for (a, b) in self.outcomes.iter_mut().zip(&o.outcomes) {
            *a += b;
        }
    }

    /// Counts `packets` received packets, `bytes` in all, of one outcome.
    #[inline(always)]
    pub fn received(&mut self, o: Outcome, packets: u64, bytes: u64) {
        self.rx_packets += packets;
        self.rx_bytes += bytes;
        self.outcomes[o as usize] += packets;
    }

    pub fn get(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize]
    }

    /// The sum of all outcomes; equals `rx_packets`.
    pub fn outcome_total(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    /// The non-zero outcomes, for display.
    pub fn nonzero(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL
            .iter()
            .map(|o| (*o, self.get(*o)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Frames a port's worker dropped at send time, after the datapath decided
/// to forward them. Kept apart from [`Outcome`]: a frame's outcome is
/// counted once, when it is received (and tests assert that the outcomes
/// add up to the frames received); a send that fails later would have to
/// count that frame twice, or change its outcome after the fact. So these
/// are the destination port's own counters, like `tx_packets` (which counts
/// what the datapath handed to the port, dropped here or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxDrops {
    /// The port refused the frame with an error other than "would block"
    /// (link down, device gone): dropped at once, never queued.
    pub tx_error: u64,
    /// The port would block and its pending queue was at its bound.
    pub tx_queue_full: u64,
}

impl TxDrops {
    pub fn total(&self) -> u64 {
        self.tx_error + self.tx_queue_full
    }
}
