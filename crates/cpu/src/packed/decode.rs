//! One superblock of a file-layout row taken apart into unsigned quants and raw scales.

use super::Kind;
use suanli_core::quant::scale_min_k4;

pub struct Superblock {
    /// f16 bits of the scale (`d`).
    pub d: u16,
    /// f16 bits of the min (Q4_1/Q5_1) or dmin (Q4_K/Q5_K).
    pub second: u16,
    /// Sub-block scales (Q6_K and IQ4_XS: signed, as two's complement).
    pub sc: [u8; 16],
    /// Sub-block mins (Q4_K/Q5_K).
    pub mn: [u8; 8],
    /// Unsigned quants (IQ4 types: the 4-bit level index).
    pub q: [u8; 256],
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Nibbles of 16 bytes: element j from the low nibble of byte j, element 16 + j from its high one.
fn nibbles(qs: &[u8], q: &mut [u8]) {
    for j in 0..16 {
        q[j] = qs[j] & 0xF;
        q[j + 16] = qs[j] >> 4;
    }
}

/// Bit 4 of element j of a Q5_0/Q5_1 block is bit j of `qh`.
fn fifth_bits(qh: u32, q: &mut [u8]) {
    for (j, v) in q.iter_mut().enumerate().take(32) {
        *v |= (((qh >> j) & 1) as u8) << 4;
    }
}

impl Default for Superblock {
    fn default() -> Self {
        Superblock {
            d: 0,
            second: 0,
            sc: [0; 16],
            mn: [0; 8],
            q: [0; 256],
        }
    }
}

/// Decode superblock `b` into `s` (reused across calls: every field a kind uses is written).
pub fn superblock(k: Kind, b: &[u8], s: &mut Superblock) {
    s.d = u16_at(b, 0);
    let qh32 = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    match k {
        Kind::Q4_0 | Kind::IQ4NL => nibbles(&b[2..18], &mut s.q),
        Kind::Q4_1 => {
            s.second = u16_at(b, 2);
            nibbles(&b[4..20], &mut s.q);
        }
        Kind::Q5_0 => {
            nibbles(&b[6..22], &mut s.q);
            fifth_bits(qh32(2), &mut s.q);
        }
        Kind::Q5_1 => {
            s.second = u16_at(b, 2);
            nibbles(&b[8..24], &mut s.q);
            fifth_bits(qh32(4), &mut s.q);
        }
        Kind::Q8_0 => {
            for j in 0..32 {
                s.q[j] = b[2 + j] ^ 0x80;
            }
        }
        Kind::Q4K | Kind::Q5K => {
            s.second = u16_at(b, 2);
            for j in 0..8 {
                (s.sc[j], s.mn[j]) = scale_min_k4(j, &b[4..16]);
            }
            let (qs, qh) = if k == Kind::Q5K {
                (&b[48..176], Some(&b[16..48]))
            } else {
                (&b[16..144], None)
            };
            for c in 0..4 {
                for l in 0..32 {
                    let v = qs[c * 32 + l];
                    let (mut lo, mut hi) = (v & 0xF, v >> 4);
                    if let Some(qh) = qh {
                        lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                    }
                    s.q[c * 64 + l] = lo;
                    s.q[c * 64 + 32 + l] = hi;
                }
            }
        }
        Kind::Q6K => {
            let (ql, qh) = (&b[0..128], &b[128..192]);
            s.d = u16_at(b, 208);
            s.sc.copy_from_slice(&b[192..208]);
            for n in 0..2 {
                for l in 0..32 {
                    let (a, c, h) = (ql[n * 64 + l], ql[n * 64 + 32 + l], qh[n * 32 + l]);
                    let q = &mut s.q[n * 128..];
                    q[l] = (a & 0xF) | ((h & 3) << 4);
                    q[l + 32] = (c & 0xF) | (((h >> 2) & 3) << 4);
                    q[l + 64] = (a >> 4) | (((h >> 4) & 3) << 4);
                    q[l + 96] = (c >> 4) | (((h >> 6) & 3) << 4);
                }
            }
        }
        Kind::IQ4XS => {
            let scales_h = u16_at(b, 2);
            for ib in 0..8 {
                let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF;
                let hi = ((scales_h >> (2 * ib)) & 3) as u8;
                s.sc[ib] = ((lo | (hi << 4)) as i32 - 32) as i8 as u8;
                nibbles(&b[8 + ib * 16..24 + ib * 16], &mut s.q[ib * 32..]);
            }
        }
    }
}
