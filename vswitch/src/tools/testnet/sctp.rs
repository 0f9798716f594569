//! Just enough SCTP for a reachability probe: a client sends an INIT, a
//! listening server answers with an INIT-ACK (RFC 9260 §5.1). Packets carry
//! real CRC32c checksums. smoltcp has no SCTP, so test hosts speak this.

use std::net::IpAddr;

use vswitch_datapath::wire::ip_proto::SCTP as PROTO_SCTP;

const INIT: u8 = 1;
const INIT_ACK: u8 = 2;

/// CRC32c (Castagnoli), reflected, as SCTP uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet (common header + one INIT or INIT-ACK chunk).
fn sctp(sport: u16, dport: u16, vtag: u32, chunk: u8, initiate_tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]); // checksum, below
    // chunk: type, flags, length 20; initiate tag, a_rwnd, streams, initial TSN
    p.extend_from_slice(&[chunk, 0, 0, 20]);
    p.extend_from_slice(&initiate_tag.to_be_bytes());
    p.extend_from_slice(&65_535u32.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&initiate_tag.to_be_bytes());
    let c = crc32c(&p);
    p[8..12].copy_from_slice(&c.to_le_bytes()); // CRC32c goes in little-endian order
    p
}

fn ip_packet(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + payload.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, PROTO_SCTP, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let mut sum = 0u32;
            for w in p.chunks(2) {
                sum += u16::from_be_bytes([w[0], w[1]]) as u32;
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            p.extend_from_slice(&[PROTO_SCTP, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    p.extend_from_slice(payload);
    p
}

/// An INIT from `src:sport` to `dst:dport` as an IP packet.
pub fn init(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    ip_packet(src, dst, &sctp(sport, dport, 0, INIT, tag))
}

/// What an SCTP packet (given as an IP packet) is, if it is INIT or INIT-ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub init_ack: bool,
    /// INIT: its initiate tag; INIT-ACK: the verification tag (the INIT's tag).
    pub tag: u32,
}

pub fn parse(ip: &[u8]) -> Option<Chunk> {
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match ip.first()? >> 4 {
        4 => {
            let hl = ((ip[0] & 0x0f) as usize) * 4;
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (s.into(), d.into(), ip[9], ip.get(hl..)?)
        }
        6 => {
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (s.into(), d.into(), ip[6], ip.get(40..)?)
        }
        _ => return None,
    };
    if proto != PROTO_SCTP || l4.len() < 32 {
        return None;
    }
    let mut check = l4.to_vec();
    check[8..12].copy_from_slice(&[0; 4]);
    if crc32c(&check).to_le_bytes() != l4[8..12] {
        return None;
    }
    let u16at = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    let u32at = |i: usize| u32::from_be_bytes([l4[i], l4[i + 1], l4[i + 2], l4[i + 3]]);
    let (init_ack, tag) = match l4[12] {
        INIT => (false, u32at(16)),
        INIT_ACK => (true, u32at(4)),
        _ => return None,
    };
    Some(Chunk {
        src,
        dst,
        sport: u16at(0),
        dport: u16at(2),
        init_ack,
        tag,
    })
}

/// The INIT-ACK a server sends back for an INIT.
pub fn init_ack(init: &Chunk, own_tag: u32) -> Vec<u8> {
    ip_packet(
        init.dst,
        init.src,
        &sctp(init.dport, init.sport, init.tag, INIT_ACK, own_tag),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_3720_vector() {
        // 32 bytes of zeros: 0x8A9136AA (RFC 3720, B.4)
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn init_and_init_ack_round_trip() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let i = parse(&init(a, b, 40000, 80, 7)).unwrap();
        assert_eq!((i.sport, i.dport, i.init_ack, i.tag), (40000, 80, false, 7));
        let r = parse(&init_ack(&i, 9)).unwrap();
        assert_eq!(
            (r.src, r.dst, r.sport, r.dport, r.init_ack, r.tag),
            (b, a, 80, 40000, true, 7)
        );
    }
}
