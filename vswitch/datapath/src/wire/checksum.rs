//! The Internet checksum (RFC 1071): the ones' complement sum, its fold to
//! 16 bits and the incremental update of RFC 1624. Every checksum the
//! datapath computes or patches goes through here.

/// Adds `data` to a running ones' complement sum (RFC 1071).
///
/// `data` is read as big-endian 16-bit words starting at `data[0]`; an odd
/// trailing byte is padded with a zero. When summing a region in several
/// pieces, every piece but the last must have even length. The result is
/// only meaningful after [`fold`].
pub fn add(sum: u64, data: &[u8]) -> u64 {
    // Ones' complement addition of 64-bit words (end-around carry) folds to
    // the same 16-bit result as adding the 16-bit words, because
    // 2^64 - 1 is divisible by 2^16 - 1.
    #[inline(always)]
    fn add(a: u64, b: u64) -> u64 {
        let (s, carry) = a.overflowing_add(b);
        s + u64::from(carry)
    }

    // Two independent accumulators let the CPU overlap the add-with-carry
    // chains.
    let mut acc0 = sum;
    let mut acc1 = 0u64;
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let (a, b) = block.split_at(8);
        acc0 = add(acc0, u64::from_be_bytes(a.try_into().unwrap()));
        acc1 = add(acc1, u64::from_be_bytes(b.try_into().unwrap()));
    }
    let mut acc = add(acc0, acc1);
    let rest = blocks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        acc = add(acc, u64::from(u16::from_be_bytes([w[0], w[1]])));
    }
    if let [last] = words.remainder() {
        acc = add(acc, u64::from(*last) << 8);
    }
    acc
}

/// Folds a ones' complement sum (from [`add`], or any sum of 16-bit words)
/// to 16 bits, not complemented.
#[inline]
pub fn fold(sum: u64) -> u16 {
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum of an IPv4 header whose checksum field is zero.
pub fn ipv4_header(hdr: &[u8]) -> u16 {
    !fold(add(0, hdr))
}

/// An IPv4 header checksum `check` updated for the TTL decremented by one
/// (RFC 1624, eqn. 3: the TTL is the high byte of its 16-bit word, so the
/// sum loses 0x0100 and the complement gains it).
#[inline(always)]
pub fn ttl_decremented(check: u16) -> u16 {
    let sum = check as u32 + 0x0100;
    (sum + (sum >> 16)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of RFC 1071 section 3: the words 0001 f203 f4f5
    /// f6f7 sum to ddf2.
    #[test]
    fn add_and_fold_give_rfc_1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), 0xddf2);
        // in two even pieces, and with an odd trailing byte padded
        assert_eq!(fold(add(add(0, &data[..4]), &data[4..])), 0xddf2);
        assert_eq!(fold(add(0, &[0xab])), 0xab00);
    }

    #[test]
    fn fold_carries_every_overflow_around() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 0x0001);
        assert_eq!(fold(0x2_fffd), 0xffff); // 0xfffd + 2
        assert_eq!(fold(u64::MAX), 0xffff);
    }

    /// The IPv4 header of the example in Wikipedia's "IPv4 header checksum"
    /// (checksum 0xb861), with its checksum field zeroed.
    #[test]
    fn ipv4_header_checksum_of_a_known_header() {
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&hdr), 0xb861);
        // and a header carrying its checksum sums to all ones
        let mut with = hdr;
        with[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(fold(add(0, &with)), 0xffff);
    }

    #[test]
    fn ttl_decrement_matches_a_full_recompute() {
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        for ttl in [64u8, 2, 0x80, 0xff] {
            hdr[8] = ttl;
            hdr[10..12].fill(0);
            let before = ipv4_header(&hdr);
            hdr[8] = ttl - 1;
            assert_eq!(ttl_decremented(before), ipv4_header(&hdr), "TTL {ttl}");
        }
        // known value: the example header's TTL 64 -> 63
        assert_eq!(ttl_decremented(0xb861), 0xb961);
    }
}
