#!/usr/bin/env python3
"""Writes a seed corpus for the `datapath` fuzz target into corpus/datapath/
(git ignores it): valid frames from the right ports, so the fuzzer starts
deep in the packet path. Input format: [port, len_hi, len_lo, frame...]..."""
import os, struct

A, B, NODE, GW = bytes([2,0,0,0,0,1]), bytes([2,0,0,0,0,2]), bytes([2,0x6e,0,0,0,0]), bytes([2,0x76,0x73,0x77,0,1])
A4, B4, N4 = bytes([10,0,0,1]), bytes([10,0,0,2]), bytes([192,168,0,1])
A6, B6 = bytes.fromhex("fd00" + "00"*13 + "01"), bytes.fromhex("fd00" + "00"*13 + "02")

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def ip4(src, dst, proto, payload, ttl=64, ident=1, frag=0):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20+len(payload), ident, frag, ttl, proto, 0, src, dst)
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload

def ip6(src, dst, nh, payload, hl=64):
    return struct.pack("!IHBB", 0x60000000, len(payload), nh, hl) + src + dst + payload

def eth(dst, src, et, payload): return dst + src + struct.pack("!H", et) + payload
def tcp(sp, dp, flags): return struct.pack("!HHIIBBHHH", sp, dp, 1, 0, 0x50, flags, 1024, 0, 0)
def udp(sp, dp, data=b"x"): return struct.pack("!HHHH", sp, dp, 8+len(data), 0) + data
def icmp(t, ident): return struct.pack("!BBHHH", t, 0, 0, ident, 1) + b"ping"
def arp(smac, sip, tip): return struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + smac + sip + b"\0"*6 + tip

def rec(port, frame): return bytes([port]) + struct.pack("!H", len(frame)) + frame

seeds = {
 "tcp-handshake": [rec(1, eth(GW, A, 0x800, ip4(A4, B4, 6, tcp(4000, 80, 2)))), rec(2, eth(GW, B, 0x800, ip4(B4, A4, 6, tcp(80, 4000, 0x12)))), rec(1, eth(GW, A, 0x800, ip4(A4, B4, 6, tcp(4000, 80, 0x10))))],
 "udp": [rec(1, eth(GW, A, 0x800, ip4(A4, B4, 17, udp(5, 53)))), rec(2, eth(GW, B, 0x800, ip4(B4, A4, 17, udp(53, 5))))],
 "echo": [rec(1, eth(GW, A, 0x800, ip4(A4, B4, 1, icmp(8, 7)))), rec(2, eth(GW, B, 0x800, ip4(B4, A4, 1, icmp(0, 7))))],
 "arp": [rec(1, eth(b"\xff"*6, A, 0x806, arp(A, A4, bytes([169,254,1,1])))), rec(0, eth(b"\xff"*6, NODE, 0x806, arp(NODE, N4, A4)))],
 "frag": [rec(1, eth(GW, A, 0x800, ip4(A4, B4, 17, udp(5, 53, b"12345678"), ident=9, frag=0x2000))), rec(1, eth(GW, A, 0x800, ip4(A4, B4, 17, b"abcdefgh", ident=9, frag=2)))],
 "udp6": [rec(1, eth(GW, A, 0x86dd, ip6(A6, B6, 17, udp(5, 53)))), rec(1, eth(GW, A, 0x86dd, ip6(A6, B6, 58, icmp(128, 3)))) ],
 "ttl": [rec(1, eth(GW, A, 0x800, ip4(A4, B4, 6, tcp(4000, 80, 2), ttl=1)))],
 "node": [rec(0, eth(GW, NODE, 0x800, ip4(N4, A4, 6, tcp(5000, 80, 2)))), rec(0, eth(GW, NODE, 0x800, ip4(bytes([203,0,113,9]), A4, 17, udp(5, 53))))],
 "kube-proxy": [rec(1, eth(GW, A, 0x800, ip4(A4, bytes([10,96,0,10]), 6, tcp(4100, 80, 2)))), rec(0, eth(GW, NODE, 0x800, ip4(A4, B4, 6, tcp(4100, 8080, 2)))), rec(2, eth(GW, B, 0x800, ip4(B4, A4, 6, tcp(8080, 4100, 0x12)))), rec(0, eth(GW, NODE, 0x800, ip4(bytes([10,96,0,10]), A4, 6, tcp(80, 4100, 0x12))))],
 "services": [rec(1, eth(GW, A, 0x800, ip4(A4, bytes([10,96,0,10]), 6, tcp(4200, 80, 2)))), rec(2, eth(GW, B, 0x800, ip4(B4, A4, 6, tcp(80, 4200, 0x12)))), rec(1, eth(GW, A, 0x800, ip4(A4, bytes([10,96,0,10]), 6, tcp(4200, 80, 0x10)))), rec(1, eth(GW, A, 0x800, ip4(A4, bytes([10,96,0,10]), 6, tcp(4200, 80, 0x10)))), rec(2, eth(GW, B, 0x800, ip4(B4, A4, 6, tcp(80, 4200, 0x10)))), rec(1, eth(GW, A, 0x800, ip4(A4, bytes([10,96,0,10]), 6, tcp(4201, 81, 2)))), rec(1, eth(GW, A, 0x800, ip4(A4, bytes([169,254,1,253]), 6, tcp(80, 4201, 0x12)))), rec(1, eth(GW, A, 0x800, ip4(A4, bytes([10,96,0,10]), 17, udp(4202, 53)))), rec(2, eth(GW, B, 0x800, ip4(B4, A4, 17, udp(53, 4202)))), rec(1, eth(GW, A, 0x800, ip4(A4, bytes([10,96,0,11]), 6, tcp(4203, 80, 2))))],
 "sctp": [rec(1, eth(GW, A, 0x800, ip4(A4, B4, 132, struct.pack("!HHII", 5, 80, 0, 0) + bytes([1,0,0,20]) + b"\0"*16)))],
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "datapath")
os.makedirs(out, exist_ok=True)
for name, recs in seeds.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(b"".join(recs))
print(f"{len(seeds)} seeds in {out}")
