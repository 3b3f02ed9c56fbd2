//! Element access to contiguous float32 CPU tensors, for the hand-written
//! loops of `fused` (a cached head's step) and `winograd` (the tile
//! transforms), which read and write tensor storage as slices.

use tch::{Device, Kind, Tensor};

/// Whether `t` is a float32 tensor on the CPU.
pub(super) fn cpu_f32(t: &Tensor) -> bool {
    t.device() == Device::Cpu && t.kind() == Kind::Float
}

/// A contiguous float32 CPU tensor's elements.
pub(super) fn values(t: &Tensor) -> &[f32] {
    debug_assert!(cpu_f32(t) && t.is_contiguous());
    // SAFETY: `t` is a contiguous float32 CPU tensor of `numel` elements that outlives the slice.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) }
}

/// Writable elements of a contiguous float32 CPU tensor. Callers write only
/// storage that nothing else reads or writes meanwhile: `fused`, a head's
/// running statistics and parameter gradients during its step (a fit trains
/// its model on one thread); `winograd`, each worker's own block buffers.
#[allow(clippy::mut_from_ref)] // a tensor is a handle to its storage
pub(super) fn values_mut(t: &Tensor) -> &mut [f32] {
    debug_assert!(cpu_f32(t) && t.is_contiguous());
    // SAFETY: as `values`; no other reference to this storage is used while the slice lives (above).
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) }
}
