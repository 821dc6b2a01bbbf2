//! The checkpoint loader on arbitrary bytes: two "files" (the input split in two), every
//! selection mode. Any outcome but a panic, crash or abort (an unchecked allocation, under
//! scripts/fuzz.sh's memory limits) is fine.
//!
//! Not through the C ABI: the C ABI reads checkpoints only in `pdiff_dataset_*`, which exist in
//! the training build alone (feature `train`, libtorch), and the fuzzers do not build libtorch;
//! the serve-only C ABI has no checkpoint path. This target calls what those functions run:
//! `pdiff_dataset_load` is `ParamSet::load_dir`, i.e. `ParamSet::load_with` over files read
//! from disk, and `ParamSet::from_safetensors_bytes` is the same `load_with` over bytes in
//! memory (header checks, tensor selection, conversion to f32, statistics).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pdiff_core::params::{ParamSet, Selection};
use pdiff_fuzz::limit_address_space;
use std::path::PathBuf;

fuzz_target!(init: limit_address_space(), |data: &[u8]| {
    let cut = data.first().map(|&b| b as usize % (data.len().max(1))).unwrap_or(0);
    let files = vec![(PathBuf::from("a.safetensors"), data[..cut].to_vec()), (PathBuf::from("b.safetensors"), data[cut..].to_vec())];
    let _ = ParamSet::from_safetensors_bytes(&files, &Selection::AllFloat);
    let same = vec![(PathBuf::from("a.safetensors"), data.to_vec()), (PathBuf::from("b.safetensors"), data.to_vec())];
    if let Ok(set) = ParamSet::from_safetensors_bytes(&same, &Selection::patterns(&["*weight*", "bias"])) {
        let _ = set.normalized();
    }
});
