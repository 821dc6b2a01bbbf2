//! The checkpoint loader on arbitrary bytes: two "files" (the input split in two), every
//! selection mode. Any outcome but a panic or crash is fine.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pdiff_core::params::{ParamSet, Selection};
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map(|&b| b as usize % (data.len().max(1))).unwrap_or(0);
    let files = vec![(PathBuf::from("a.safetensors"), data[..cut].to_vec()), (PathBuf::from("b.safetensors"), data[cut..].to_vec())];
    let _ = ParamSet::from_safetensors_bytes(&files, &Selection::AllFloat);
    let same = vec![(PathBuf::from("a.safetensors"), data.to_vec()), (PathBuf::from("b.safetensors"), data.to_vec())];
    if let Ok(set) = ParamSet::from_safetensors_bytes(&same, &Selection::patterns(&["*weight*", "bias"])) {
        let _ = set.normalized();
    }
});
