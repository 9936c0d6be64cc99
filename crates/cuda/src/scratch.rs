//! Device scratch reused across ops: grown on demand, never shrunk, so the decode loop allocates
//! nothing after its first step. Small host arrays (positions, slots, block tables) are uploaded
//! only when they differ from the last upload — a step's layers share one copy.

use crate::device::{DevBuf, Device};
use std::sync::Arc;
use suanli_backend::Result;

/// A device buffer of at least `bytes`.
pub fn ensure<'a>(
    dev: &Arc<dyn Device>,
    slot: &'a mut Option<DevBuf>,
    bytes: usize,
) -> Result<&'a DevBuf> {
    if slot.as_ref().is_none_or(|s| s.bytes < bytes) {
        *slot = None; // free first: the old one may be most of the memory
        *slot = Some(DevBuf::new(dev, bytes, "device scratch")?);
    }
    Ok(slot.as_ref().expect("allocated above"))
}

/// A host array (as bytes) mirrored on the device.
#[derive(Default)]
pub struct Upload {
    host: Vec<u8>,
    dev: Option<DevBuf>,
}

impl Upload {
    pub fn put(&mut self, dev: &Arc<dyn Device>, data: &[u8]) -> Result<&DevBuf> {
        let fresh = self.dev.as_ref().is_some_and(|d| d.bytes >= data.len()) && self.host == data;
        if !fresh {
            let buf = ensure(dev, &mut self.dev, data.len().next_power_of_two())?;
            if !data.is_empty() {
                dev.htod(buf.ptr, data)?;
            }
            self.host.clear();
            self.host.extend_from_slice(data);
        }
        Ok(self.dev.as_ref().expect("allocated above"))
    }
}

#[derive(Default)]
pub struct Scratch {
    pub bf16_w: Option<DevBuf>,
    pub bf16_x: Option<DevBuf>,
    pub gather: Option<DevBuf>,
    pub logits: Option<DevBuf>,
    /// top_logits' answer: ids, then values.
    pub top_out: Option<DevBuf>,
    /// The GEMM attention path: gathered K and V, queries in the cache's type, scores, probabilities.
    pub att_k: Option<DevBuf>,
    pub att_v: Option<DevBuf>,
    pub att_q: Option<DevBuf>,
    pub att_s: Option<DevBuf>,
    pub att_p: Option<DevBuf>,
    /// Split decode attention: per (row, head, split) max, sum and unnormalized output.
    pub att_part: Option<DevBuf>,
    pub ids: Upload,
    pub rows: Upload,
    pub positions: Upload,
    pub inv_freq: Upload,
    pub slots: Upload,
    pub tables: Upload,
    pub row_meta: Upload,
    pub flash_tiles: Upload,
    /// sample_logits' per-row (temperature, min_p) and uniform draws.
    pub draw_params: Upload,
    pub draw_us: Upload,
}
