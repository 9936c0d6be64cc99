//! The packed kinds as constant generic arguments (`K`), shared by every ISA's kernels over the
//! packed layout (`crate::packed`), and the macros that write their loops out.

use crate::packed::{Kind, Packed, ROWS};

pub(super) const Q4_0: u8 = 0;
pub(super) const Q4_1: u8 = 1;
pub(super) const Q5_0: u8 = 2;
pub(super) const Q5_1: u8 = 3;
pub(super) const Q8_0: u8 = 4;
pub(super) const IQ4NL: u8 = 5;
pub(super) const Q4K: u8 = 6;
pub(super) const Q5K: u8 = 7;
pub(super) const Q6K: u8 = 8;
pub(super) const IQ4XS: u8 = 9;

/// `$body` for `$t` = 0, 1, … 15 while `$t < $n`, written out: a loop over an array of vector
/// accumulators that LLVM does not unroll keeps them on the stack (a store and a load per
/// update, measured as most of the kernels' time).
macro_rules! unroll16 {
    ($t:ident < $n:expr, $body:block) => {
        unroll16!(@ $t, $n, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    // `$t` a constant (a const generic argument) taking each of the listed values.
    (const $t:ident in [$($i:literal)*], $body:block) => {
        $( {
            #[allow(non_upper_case_globals)]
            const $t: usize = $i;
            $body
        } )*
    };
    // `$t` a constant here too, so that bodies may name it in const arguments.
    (@ $t:ident, $n:expr, $body:block, $($i:literal)*) => {
        $( if $i < $n {
            #[allow(non_upper_case_globals)]
            const $t: usize = $i;
            $body
        } )*
    };
}
#[allow(unused_imports)]
pub(super) use unroll16;

/// `$f::<K>` for the kind `$k` (a `Kind`), as a function pointer.
macro_rules! by_kind {
    ($k:expr, $f:ident) => {
        match $k {
            Kind::Q4_0 => $f::<Q4_0>,
            Kind::Q4_1 => $f::<Q4_1>,
            Kind::Q5_0 => $f::<Q5_0>,
            Kind::Q5_1 => $f::<Q5_1>,
            Kind::Q8_0 => $f::<Q8_0>,
            Kind::IQ4NL => $f::<IQ4NL>,
            Kind::Q4K => $f::<Q4K>,
            Kind::Q5K => $f::<Q5K>,
            Kind::Q6K => $f::<Q6K>,
            Kind::IQ4XS => $f::<IQ4XS>,
        }
    };
}
pub(super) use by_kind;

pub(super) const fn kind(k: u8) -> Kind {
    match k {
        Q4_0 => Kind::Q4_0,
        Q4_1 => Kind::Q4_1,
        Q5_0 => Kind::Q5_0,
        Q5_1 => Kind::Q5_1,
        Q8_0 => Kind::Q8_0,
        IQ4NL => Kind::IQ4NL,
        Q4K => Kind::Q4K,
        Q5K => Kind::Q5K,
        Q6K => Kind::Q6K,
        _ => Kind::IQ4XS,
    }
}

/// The constant of `kind` (`kind`'s inverse; the x86 kernels ask it).
#[cfg(target_arch = "x86_64")]
pub(super) const fn id(kind: Kind) -> u8 {
    match kind {
        Kind::Q4_0 => Q4_0,
        Kind::Q4_1 => Q4_1,
        Kind::Q5_0 => Q5_0,
        Kind::Q5_1 => Q5_1,
        Kind::Q8_0 => Q8_0,
        Kind::IQ4NL => IQ4NL,
        Kind::Q4K => Q4K,
        Kind::Q5K => Q5K,
        Kind::Q6K => Q6K,
        Kind::IQ4XS => IQ4XS,
    }
}

/// `tokens` cut into tiles of at most `most` tokens, as even as possible (11 tokens in tiles of
/// 8: 6 + 5, not 8 + 3 — a tile of 1 or 2 tokens costs 2–3 times as much per token as one of
/// 5 or more, `matmul_probe`): each tile's first token and size. An iterator, not a callback,
/// so that the caller's loop body keeps its target features.
pub(super) fn even_tiles(
    tokens: std::ops::Range<usize>,
    most: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let n = tokens.len();
    let tiles = n.div_ceil(most);
    (0..tiles).scan(tokens.start, move |t, i| {
        let size = n / tiles + usize::from(i < n % tiles);
        let first = *t;
        *t += size;
        Some((first, size))
    })
}

/// The groups `groups` of `p` cut into `parts` parts of `ROWS / parts` rows (the halves and
/// quarters of the narrower ISAs' registers), those that hold rows: the group's bytes, the
/// part's index, its first row and how many of its rows exist.
pub(super) fn row_parts(
    p: &Packed,
    groups: std::ops::Range<usize>,
    parts: usize,
) -> impl Iterator<Item = (*const u8, usize, usize, usize)> + '_ {
    let per = ROWS / parts;
    groups
        .flat_map(move |g| (0..parts).map(move |r| (g, r)))
        .filter_map(move |(g, r)| {
            let r0 = g * ROWS + per * r;
            (r0 < p.rows).then(|| (p.group(g).as_ptr(), r, r0, (p.rows - r0).min(per)))
        })
}
