//! Scans over f32 rows (logits) written so that the compiler vectorizes them.

/// The largest value of `block`, NaN ignored (−∞ if there is none): 16 lane-wise maxima first,
/// which run as vector operations, then those and the tail. For blocks of a few dozen values,
/// where most blocks are only compared against a running bound.
#[inline]
pub fn block_max(block: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    for part in block.chunks_exact(16) {
        for (l, &x) in lanes.iter_mut().zip(part) {
            *l = if x > *l { x } else { *l };
        }
    }
    block
        .chunks_exact(16)
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &x| if x > a { x } else { a })
}

/// The first value of `row` that is NaN or infinite: blocks of 64 are tested with lane-wise
/// ORs (vector code; `iter().find` stops per value and stays scalar — 2 % of a 16-stream
/// decode step, on the thread the others wait for), then the block that has one is searched.
pub fn first_nonfinite(row: &[f32]) -> Option<f32> {
    let bad = |x: &f32| x.to_bits() & 0x7f80_0000 == 0x7f80_0000;
    for block in row.chunks(64) {
        let mut any = [false; 16];
        for part in block.chunks_exact(16) {
            for (a, x) in any.iter_mut().zip(part) {
                *a |= bad(x);
            }
        }
        let tail = block.chunks_exact(16).remainder().iter().any(bad);
        if tail || any.iter().any(|&a| a) {
            return block.iter().copied().find(|x| bad(x));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_nonfinite_finds_the_first_anywhere() {
        assert_eq!(super::first_nonfinite(&[]), None);
        let mut v: Vec<f32> = (0..1000).map(|i| i as f32 * -1.5e30).collect();
        assert_eq!(super::first_nonfinite(&v), None);
        for (i, bad) in [
            (999, f32::INFINITY),
            (130, f32::NEG_INFINITY),
            (5, f32::NAN),
        ] {
            v[i] = bad;
            let got = super::first_nonfinite(&v).unwrap();
            assert_eq!(got.to_bits(), bad.to_bits(), "at {i}");
        }
        assert!(super::first_nonfinite(&[f32::MAX, f32::MIN, 1e-45]).is_none());
    }

    #[test]
    fn block_max_ignores_nan_and_reads_the_tail() {
        let mut v: Vec<f32> = (0..70).map(|i| (i % 13) as f32 - 6.0).collect();
        assert_eq!(super::block_max(&v), 6.0);
        v[68] = 9.5;
        v[3] = f32::NAN;
        assert_eq!(super::block_max(&v), 9.5);
        assert_eq!(super::block_max(&[f32::NAN; 20]), f32::NEG_INFINITY);
        assert_eq!(super::block_max(&[]), f32::NEG_INFINITY);
    }
}
