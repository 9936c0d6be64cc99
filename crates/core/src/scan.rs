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

#[cfg(test)]
mod tests {
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
