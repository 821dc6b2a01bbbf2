//! A conditions file from arbitrary bytes: byte 0 chooses the format (even: `.json`, odd:
//! `.csv`; the seeds start with 'j' or 'c'), the rest is the file, written to a temporary
//! directory and read with `Conditions::from_file` (what `pdiff_dataset_set_conditions_file`
//! and `pdiff train --conditions` run; that C function exists in the training build alone)
//! against [`SOURCES`], a fixed list of checkpoint paths in which two share a file name.
//!
//! Any error is fine; a panic, crash or abort (an unchecked allocation, under scripts/fuzz.sh's
//! memory limits) is a bug, and so is an accepted file that breaks the contract: one vector per
//! checkpoint, all of one dimension C >= 1, every value finite, and when names are given, C of
//! them, distinct and non-empty.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pdiff_core::params::Conditions;
use pdiff_fuzz::{limit_address_space, scratch_root, verbose};

/// The checkpoints the file must give vectors for. Two share the file name c00.safetensors, so
/// the bare name is ambiguous and only their paths name them.
const SOURCES: [&str; 5] = ["runs/a/c00.safetensors", "runs/b/c00.safetensors", "ckpt/c01.safetensors", "c02.safetensors", "/data/run 7/model.safetensors"];

fn check_contract(c: &Conditions) {
    let dim = c.spec.dim;
    assert!(dim >= 1, "condition dimension 0 accepted");
    assert_eq!(c.values.len(), SOURCES.len() * dim, "{} values for {} checkpoints of dimension {dim}", c.values.len(), SOURCES.len());
    assert_eq!(c.len(), SOURCES.len());
    for i in 0..c.len() {
        assert_eq!(c.row(i).len(), dim);
    }
    if let Some(v) = c.values.iter().find(|v| !v.is_finite()) {
        panic!("non-finite condition value {v} accepted");
    }
    if let Some(names) = &c.spec.names {
        assert_eq!(names.len(), dim, "{} names for dimension {dim}", names.len());
        for (i, n) in names.iter().enumerate() {
            assert!(!n.is_empty() && !names[..i].contains(n), "name {i} ({n:?}) empty or repeated");
        }
    }
}

fuzz_target!(init: limit_address_space(), |data: &[u8]| {
    let Some((&format, text)) = data.split_first() else { return };
    let name = if format % 2 == 0 { "conditions.json" } else { "conditions.csv" };
    let dir = tempfile::Builder::new().prefix("pdiff-fuzz-conditions").tempdir_in(scratch_root()).expect("a scratch directory");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("writing the conditions file");
    let sources: Vec<String> = SOURCES.iter().map(|s| s.to_string()).collect();
    let outcome = Conditions::from_file(&path, &sources);
    if let Ok(c) = &outcome {
        check_contract(c);
    }
    if verbose() {
        match outcome {
            Ok(c) => eprintln!("conditions: {name}: {} vectors of {}{}", c.len(), c.spec.dim, if c.spec.names.is_some() { ", named" } else { "" }),
            Err(e) => eprintln!("conditions: {name}: error: {e}"),
        }
    }
});
