//! `pdiff_dataset`: K checkpoints (a `ParamSet`), loaded from safetensors files or pushed from
//! memory with a declared layout.
use crate::args::{nonnull, path_arg, str_arg};
use crate::boundary::{ffi_boundary, ffi_call};
use crate::handles::{Handle, HandleOut};
use crate::status::{pdiff_status, Failure, FfiResult};
use pdiff_core::params::{ConditionSpec, Conditions, Layout, ParamSet, Selection};
use std::ffi::{c_char, CString};

/// K checkpoints of one network (or of a subset of its tensors) and their layout. Opaque.
/// Create with `pdiff_dataset_load_dir` or `pdiff_dataset_from_memory`, release with
/// `pdiff_dataset_free`. Immutable once created: concurrent reads from several threads are safe.
pub struct pdiff_dataset {
    pub(crate) set: ParamSet,
    warnings: Vec<CString>,
}

impl pdiff_dataset {
    fn new(set: ParamSet) -> Self {
        let warnings = warning_cstrings(&set.warnings);
        pdiff_dataset { set, warnings }
    }
}

impl Handle for pdiff_dataset {}

/// Warnings as C strings owned by their handle (a NUL inside a message becomes a space).
pub(super) fn warning_cstrings(warnings: &[String]) -> Vec<CString> {
    warnings.iter().map(|w| CString::new(w.replace('\0', " ")).unwrap_or_default()).collect()
}

/// Declaration of one tensor of a parameter vector pushed from memory: its name and shape.
/// Tensors are laid out one after the other in declaration order, each row-major.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pdiff_tensor_decl {
    /// NUL-terminated UTF-8 tensor name (unique within the layout). Borrowed during the call.
    pub name: *const c_char,
    /// Number of dimensions (0 for a scalar).
    pub ndim: usize,
    /// `ndim` dimension sizes (may be NULL when `ndim` is 0). Borrowed during the call.
    pub shape: *const usize,
}

fn collect_patterns(patterns: *const *const c_char, n: usize) -> FfiResult<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    nonnull!(patterns, "patterns");
    (0..n).map(|i| unsafe { str_arg(*patterns.add(i), &format!("patterns[{i}]")) }.map(str::to_string)).collect()
}

/// Load every `*.safetensors` file of `dir` (sorted by file name) as one checkpoint each.
///
/// `patterns` selects the modelled tensors: `n_patterns` exact names or glob patterns
/// (`*`, `?`, `[..]`), each of which must match a tensor; with `n_patterns` = 0 (`patterns`
/// may then be NULL) every floating-point tensor is modelled. At least 2 checkpoints are needed.
///
/// Ownership: `dir` and `patterns` are borrowed for the duration of the call only. On
/// `PDIFF_OK`, `*out` receives a new dataset owned by the caller, to be released with
/// `pdiff_dataset_free`; on error `*out` is left untouched.
#[no_mangle]
pub unsafe extern "C" fn pdiff_dataset_load_dir(
    dir: *const c_char,
    patterns: *const *const c_char,
    n_patterns: usize,
    out: *mut *mut pdiff_dataset,
) -> pdiff_status {
    ffi_call!(pdiff_dataset_load_dir, || {
        let out = HandleOut::new(out)?;
        let dir = unsafe { path_arg(dir, "dir") }?;
        let patterns = collect_patterns(patterns, n_patterns)?;
        let set = ParamSet::load_dir(&dir, &Selection::patterns(&patterns))?;
        out.give(pdiff_dataset::new(set));
        Ok(())
    })
}

/// Build a dataset from K flat parameter vectors in memory (input B of the spec).
///
/// `tensors[0..n_tensors]` declares the layout: D = the sum of the tensors' element counts.
/// `data` holds `k * D` floats, row-major: checkpoint i is `data[i*D .. (i+1)*D]`, its tensors
/// one after the other in declaration order. Values must be finite and `k` must be >= 2.
///
/// Ownership: `tensors` (with their names and shapes) and `data` are borrowed for the duration
/// of the call only (the values are copied). On `PDIFF_OK`, `*out` receives a new dataset owned
/// by the caller, to be released with `pdiff_dataset_free`; on error `*out` is left untouched.
#[no_mangle]
pub unsafe extern "C" fn pdiff_dataset_from_memory(
    tensors: *const pdiff_tensor_decl,
    n_tensors: usize,
    data: *const f32,
    k: usize,
    out: *mut *mut pdiff_dataset,
) -> pdiff_status {
    ffi_call!(pdiff_dataset_from_memory, || {
        let out = HandleOut::new(out)?;
        let set = unsafe { set_from_memory(tensors, n_tensors, data, k) }?;
        out.give(pdiff_dataset::new(set));
        Ok(())
    })
}

/// The ParamSet of `pdiff_dataset_from_memory`'s arguments.
unsafe fn set_from_memory(tensors: *const pdiff_tensor_decl, n_tensors: usize, data: *const f32, k: usize) -> FfiResult<ParamSet> {
    nonnull!(tensors, "tensors");
    if n_tensors == 0 {
        return Err(Failure::invalid("n_tensors is 0: the layout needs at least one tensor"));
    }
    let decls = unsafe { std::slice::from_raw_parts(tensors, n_tensors) };
    let mut entries = Vec::with_capacity(n_tensors);
    for (i, t) in decls.iter().enumerate() {
        let name = unsafe { str_arg(t.name, &format!("tensors[{i}].name")) }?;
        let shape = if t.ndim == 0 {
            Vec::new()
        } else {
            if t.shape.is_null() {
                return Err(Failure::null(format!("tensors[{i}].shape is NULL")));
            }
            unsafe { std::slice::from_raw_parts(t.shape, t.ndim) }.to_vec()
        };
        let numel = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s));
        if numel.is_none() {
            return Err(Failure::invalid(format!("tensor '{name}': shape {shape:?} overflows")));
        }
        entries.push((name.to_string(), shape));
    }
    let layout = Layout::from_shapes(&entries)?;
    let d = layout.param_count();
    let len = k.checked_mul(d).ok_or_else(|| Failure::invalid(format!("k = {k} times D = {d} overflows")))?;
    let values = if len == 0 {
        Vec::new()
    } else {
        nonnull!(data, "data");
        unsafe { std::slice::from_raw_parts(data, len) }.to_vec()
    };
    let sources = (0..k).map(|i| format!("memory[{i}]")).collect();
    Ok(ParamSet::from_rows(layout, values, sources)?)
}

/// `pdiff_dataset_load_dir` for a conditional generator: also read one condition vector per
/// checkpoint from `conditions_file` (docs/design.md, "Conditional generation"): a `.json` file
/// `{"names": [...], "conditions": {"<checkpoint file>": [C floats], ...}}` (`names` optional)
/// or a `.csv` file of lines `<checkpoint file>,v0,v1,...` (an optional first line
/// `file,<name0>,<name1>,...` names the dimensions). Every checkpoint needs exactly one vector
/// and every entry must name a checkpoint of `dir`.
///
/// Ownership: as `pdiff_dataset_load_dir`; `conditions_file` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_dataset_load_dir_conditional(
    dir: *const c_char,
    patterns: *const *const c_char,
    n_patterns: usize,
    conditions_file: *const c_char,
    out: *mut *mut pdiff_dataset,
) -> pdiff_status {
    ffi_call!(pdiff_dataset_load_dir_conditional, || {
        let out = HandleOut::new(out)?;
        let dir = unsafe { path_arg(dir, "dir") }?;
        let file = unsafe { path_arg(conditions_file, "conditions_file") }?;
        let patterns = collect_patterns(patterns, n_patterns)?;
        let set = ParamSet::load_dir(&dir, &Selection::patterns(&patterns))?.with_conditions_file(&file)?;
        out.give(pdiff_dataset::new(set));
        Ok(())
    })
}

/// `pdiff_dataset_from_memory` for a conditional generator: `conditions` holds `k *
/// condition_dim` finite floats, row-major: checkpoint i's condition is
/// `conditions[i*C .. (i+1)*C]` (C = `condition_dim` >= 1).
///
/// Ownership: as `pdiff_dataset_from_memory`; `conditions` is borrowed for the call (copied).
#[no_mangle]
pub unsafe extern "C" fn pdiff_dataset_from_memory_conditional(
    tensors: *const pdiff_tensor_decl,
    n_tensors: usize,
    data: *const f32,
    k: usize,
    conditions: *const f32,
    condition_dim: usize,
    out: *mut *mut pdiff_dataset,
) -> pdiff_status {
    ffi_call!(pdiff_dataset_from_memory_conditional, || {
        let out = HandleOut::new(out)?;
        nonnull!(conditions, "conditions");
        let set = unsafe { set_from_memory(tensors, n_tensors, data, k) }?;
        let len = k.checked_mul(condition_dim).ok_or_else(|| Failure::invalid(format!("k = {k} times condition_dim = {condition_dim} overflows")))?;
        let values = unsafe { std::slice::from_raw_parts(conditions, len) }.to_vec();
        let spec = ConditionSpec { dim: condition_dim, names: None };
        let set = set.with_conditions(Conditions::new(spec, values)?)?;
        out.give(pdiff_dataset::new(set));
        Ok(())
    })
}

/// Dimension C of the datasets' condition vectors; 0 for a dataset without conditions (or
/// when `dataset` is NULL).
///
/// Ownership: `dataset` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_dataset_condition_dim(dataset: *const pdiff_dataset) -> usize {
    ffi_boundary!(pdiff_dataset_condition_dim, || Ok(unsafe { pdiff_dataset::borrow(dataset, "dataset") }?
        .set
        .conditions
        .as_ref()
        .map(|c| c.spec.dim)
        .unwrap_or(0)))
}

/// Number of checkpoints K of `dataset` (0 when `dataset` is NULL).
///
/// Ownership: `dataset` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_dataset_k(dataset: *const pdiff_dataset) -> usize {
    ffi_boundary!(pdiff_dataset_k, || Ok(unsafe { pdiff_dataset::borrow(dataset, "dataset") }?.set.k()))
}

/// Number of scalars D in one parameter vector of `dataset` (0 when `dataset` is NULL).
///
/// Ownership: `dataset` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_dataset_param_count(dataset: *const pdiff_dataset) -> usize {
    ffi_boundary!(pdiff_dataset_param_count, || Ok(unsafe { pdiff_dataset::borrow(dataset, "dataset") }?.set.layout.param_count()))
}

/// Number of non-fatal warnings found while building `dataset`: fewer than 50 checkpoints
/// (too few to learn their distribution reliably), checkpoints that look
/// permutation-misaligned (which p-diff usually fails to learn). 0 when `dataset` is NULL.
///
/// Ownership: `dataset` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_dataset_warning_count(dataset: *const pdiff_dataset) -> usize {
    ffi_boundary!(pdiff_dataset_warning_count, || Ok(unsafe { pdiff_dataset::borrow(dataset, "dataset") }?.warnings.len()))
}

/// Warning `index` (< `pdiff_dataset_warning_count`) of `dataset`, or NULL when `dataset` is
/// NULL or `index` is out of range.
///
/// Ownership: the string is owned by `dataset` and valid until `pdiff_dataset_free(dataset)`.
/// Do not free it.
#[no_mangle]
pub unsafe extern "C" fn pdiff_dataset_warning(dataset: *const pdiff_dataset, index: usize) -> *const c_char {
    ffi_boundary!(pdiff_dataset_warning, || {
        let ds = unsafe { pdiff_dataset::borrow(dataset, "dataset") }?;
        ds.warnings.get(index).map(|w| w.as_ptr()).ok_or_else(|| Failure::invalid(format!("index {index} >= warning count {}", ds.warnings.len())))
    })
}

/// Release a dataset. NULL is a no-op. Generators trained from it do not depend on it.
///
/// Ownership: takes back ownership of `dataset`; the handle (and strings borrowed from it) must
/// not be used afterwards, nor freed twice.
#[no_mangle]
pub unsafe extern "C" fn pdiff_dataset_free(dataset: *mut pdiff_dataset) {
    ffi_boundary!(pdiff_dataset_free, || {
        unsafe { pdiff_dataset::free(dataset) };
        Ok(())
    })
}
