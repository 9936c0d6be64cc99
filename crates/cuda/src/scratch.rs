//! Device scratch reused across ops: grown on demand, never shrunk, so the decode loop allocates
//! nothing after its first step. Small host arrays (positions, slots, block tables) are uploaded
//! only when they differ from the last upload — a step's 28+ layers share one copy.

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::sync::Arc;
use suanli_backend::{BackendError, Result};

/// A device buffer with at least `n` elements.
pub fn ensure<'a, T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    n: usize,
) -> Result<&'a mut CudaSlice<T>> {
    if slot.as_ref().is_none_or(|s| s.len() < n) {
        let s = stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| BackendError::OutOfMemory {
                what: "device scratch",
                detail: e.to_string(),
            })?;
        *slot = Some(s);
    }
    Ok(slot.as_mut().expect("allocated above"))
}

/// A host array mirrored on the device.
pub struct Upload<T> {
    host: Vec<T>,
    dev: Option<CudaSlice<T>>,
}

impl<T> Default for Upload<T> {
    fn default() -> Self {
        Upload {
            host: Vec::new(),
            dev: None,
        }
    }
}

impl<T: DeviceRepr + ValidAsZeroBits + Copy + PartialEq> Upload<T> {
    pub fn put(&mut self, stream: &Arc<CudaStream>, data: &[T]) -> Result<&CudaSlice<T>> {
        let fresh = self.dev.as_ref().is_some_and(|d| d.len() >= data.len()) && self.host == data;
        if !fresh {
            let dev = ensure(stream, &mut self.dev, data.len().next_power_of_two())?;
            if !data.is_empty() {
                stream
                    .memcpy_htod(data, &mut dev.slice_mut(0..data.len()))
                    .map_err(|e| BackendError::Device {
                        backend: "cuda",
                        op: "upload",
                        detail: e.to_string(),
                    })?;
            }
            self.host.clear();
            self.host.extend_from_slice(data);
        }
        Ok(self.dev.as_ref().expect("allocated above"))
    }
}

#[derive(Default)]
pub struct Scratch {
    pub bf16_w: Option<CudaSlice<u16>>,
    pub bf16_x: Option<CudaSlice<u16>>,
    pub gather: Option<CudaSlice<f32>>,
    pub logits: Option<CudaSlice<f32>>,
    pub ids_out: Option<CudaSlice<u32>>,
    pub ids: Upload<u32>,
    pub rows: Upload<u32>,
    pub positions: Upload<u32>,
    pub inv_freq: Upload<f32>,
    pub slots: Upload<u32>,
    pub tables: Upload<u32>,
    pub row_meta: Upload<u32>,
}
