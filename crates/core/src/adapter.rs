//! ONNX Runtime's adapter format (`.onnx_adapter`): one generated model as named tensors that an
//! ONNX Runtime host activates per `Run` (`CreateLoraAdapterFromArray`, `AddActiveLoraAdapter`),
//! overriding graph inputs of the same names (docs/api.md, "Adapters").
//!
//! The format is a FlatBuffers buffer of ONNX Runtime's schema
//! `onnxruntime/lora/adapter_format/adapter_schema.fbs` (namespace `onnxruntime.adapters`, file
//! identifier `TORT`, root table `Adapter`):
//!
//! ```text
//! table Parameter { name:string; dims:[int64]; data_type:TensorDataType (int32);
//!                   raw_data:[uint8] (force_align: 8); }
//! table Adapter { format_version:int; adapter_version:int; model_version:int;
//!                 parameters:[Parameter]; }
//! ```
//!
//! It is written and read with the `flatbuffers` crate (Google's runtime), the way flatc's
//! generated Rust code does it: fields by their slot in the schema, the builder placing every
//! offset. Two things flatc's Rust output would not do are done here by the builder's own calls:
//! `raw_data` starts on an 8-byte boundary (the schema's `force_align: 8`, which ONNX Runtime
//! relies on when it uses the bytes in place as a tensor), and the file identifier is written
//! by `finish` at bytes 4..8, where ONNX Runtime's `AdapterBufferHasIdentifier` looks.
use crate::error::{Error, Result};
use crate::params::Layout;
use flatbuffers::{FlatBufferBuilder, Follow, ForwardsUOffset, InvalidFlatbuffer, Table, VOffsetT, Vector, Verifiable, Verifier, VerifierOptions, WIPOffset};
use std::collections::BTreeMap;

/// The schema's `file_identifier`, at bytes 4..8 of every adapter.
pub const FILE_IDENTIFIER: &str = "TORT";
/// The adapter format version written (ONNX Runtime's `kAdapterFormatVersion`; 1.31 reads
/// version 1 only).
pub const FORMAT_VERSION: i32 = 1;
/// The file name extension ONNX Runtime's tools use.
pub const EXTENSION: &str = "onnx_adapter";
/// `TensorDataType.FLOAT` (the ONNX element type numbers).
pub const DATA_TYPE_FLOAT: i32 = 1;
/// FlatBuffers offsets are 32-bit: a buffer stays below 2 GiB (with room for the tables).
const MAX_BUFFER_BYTES: usize = (1usize << 31) - (1 << 20);

/// A table field's vtable slot, from its index in the schema (what flatc's generated `VT_*`
/// constants hold).
const fn slot(field_index: u16) -> VOffsetT {
    4 + 2 * field_index
}

/// `table Parameter`'s fields, in schema order.
mod parameter_table {
    use super::slot;
    use flatbuffers::VOffsetT;
    pub const NAME: VOffsetT = slot(0);
    pub const DIMS: VOffsetT = slot(1);
    pub const DATA_TYPE: VOffsetT = slot(2);
    pub const RAW_DATA: VOffsetT = slot(3);
}

/// `table Adapter`'s fields, in schema order.
mod adapter_table {
    use super::slot;
    use flatbuffers::VOffsetT;
    pub const FORMAT_VERSION: VOffsetT = slot(0);
    pub const ADAPTER_VERSION: VOffsetT = slot(1);
    pub const MODEL_VERSION: VOffsetT = slot(2);
    pub const PARAMETERS: VOffsetT = slot(3);
}

/// The integers an adapter carries besides its tensors (the format has no room for text).
/// ONNX Runtime returns both from `AdapterFormat.get_adapter_version()` /
/// `get_model_version()` and gives them no meaning of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdapterVersions {
    /// libpdiff writes the generated model's index here (its place in the request, which
    /// with the seed identifies the model).
    pub adapter_version: i32,
    /// 0 unless the host chooses one (the version of its model the adapter is for).
    pub model_version: i32,
}

/// How the layout's tensor names become the adapter's parameter names, which must be the host
/// graph's input names. Empty: the layout's names, unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameMap {
    renames: BTreeMap<String, String>,
}

impl NameMap {
    /// `layout_name=host_name` entries (e.g. `--adapter-name fc.weight=/fc/Gemm_B`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        let mut renames = BTreeMap::new();
        for e in entries {
            let e = e.as_ref();
            let (from, to) = e.split_once('=').ok_or_else(|| Error::invalid("adapter name", format!("'{e}' is not LAYOUT_NAME=HOST_NAME")))?;
            if from.is_empty() || to.is_empty() {
                return Err(Error::invalid("adapter name", format!("'{e}': both names must be non-empty")));
            }
            if renames.insert(from.to_string(), to.to_string()).is_some() {
                return Err(Error::invalid("adapter name", format!("tensor '{from}' is renamed twice")));
            }
        }
        Ok(NameMap { renames })
    }

    pub fn is_empty(&self) -> bool {
        self.renames.is_empty()
    }

    /// The name tensor `name` of the layout has in the adapter.
    pub fn host_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.renames.get(name).map(String::as_str).unwrap_or(name)
    }

    /// Every renamed tensor is in `layout`, and no two tensors end up with one name.
    pub fn check(&self, layout: &Layout) -> Result<()> {
        if let Some(missing) = self.renames.keys().find(|n| layout.get(n).is_none()) {
            return Err(Error::invalid("adapter name", format!("the layout has no tensor '{missing}' to rename")));
        }
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for t in &layout.tensors {
            let host = self.host_name(&t.name);
            if let Some(other) = seen.insert(host, &t.name) {
                return Err(Error::invalid("adapter name", format!("tensors '{other}' and '{}' would both be named '{host}'", t.name)));
            }
        }
        Ok(())
    }
}

/// One model of `layout` (its D values, `flat`) as adapter bytes: a FLOAT parameter per tensor,
/// named through `names`, with the layout's shape; `flat` is copied bit for bit.
pub fn model_adapter(layout: &Layout, flat: &[f32], names: &NameMap, versions: AdapterVersions) -> Result<Vec<u8>> {
    if flat.len() != layout.param_count() {
        return Err(Error::invalid("parameters", format!("vector has {} values, layout needs {}", flat.len(), layout.param_count())));
    }
    names.check(layout)?;
    let bound = adapter_size_bound(layout, names);
    if bound > MAX_BUFFER_BYTES {
        return Err(Error::invalid(
            "adapter",
            format!(
                "a model of {} parameters needs about {bound} bytes: more than the adapter format's 2 GiB (FlatBuffers' 32-bit offsets)",
                layout.param_count()
            ),
        ));
    }
    let mut b = FlatBufferBuilder::with_capacity(bound);
    let mut params = Vec::with_capacity(layout.tensors.len());
    for (t, values) in layout.split(flat) {
        let name = b.create_string(names.host_name(&t.name));
        let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        let dims = b.create_vector(&dims);
        let raw = raw_data_vector(&mut b, values);
        let start = b.start_table();
        b.push_slot_always(parameter_table::RAW_DATA, raw);
        b.push_slot_always(parameter_table::DIMS, dims);
        b.push_slot_always(parameter_table::NAME, name);
        b.push_slot_always(parameter_table::DATA_TYPE, DATA_TYPE_FLOAT);
        params.push(WIPOffset::<ParameterTable>::new(b.end_table(start).value()));
    }
    let params = b.create_vector(&params);
    let start = b.start_table();
    b.push_slot_always(adapter_table::PARAMETERS, params);
    b.push_slot_always(adapter_table::FORMAT_VERSION, FORMAT_VERSION);
    b.push_slot_always(adapter_table::ADAPTER_VERSION, versions.adapter_version);
    b.push_slot_always(adapter_table::MODEL_VERSION, versions.model_version);
    let root = WIPOffset::<AdapterTable>::new(b.end_table(start).value());
    b.finish(root, Some(FILE_IDENTIFIER));
    Ok(b.finished_data().to_vec())
}

/// The exact size in bytes of every adapter [`model_adapter`] writes for `layout` and `names`:
/// it depends on the names and shapes only, never on the values (a host sizes its buffer once).
pub fn adapter_size(layout: &Layout, names: &NameMap) -> Result<usize> {
    Ok(model_adapter(layout, &vec![0.0; layout.param_count()], names, AdapterVersions::default())?.len())
}

/// An upper bound on the bytes [`model_adapter`] writes (exactly enough to allocate once).
pub fn adapter_size_bound(layout: &Layout, names: &NameMap) -> usize {
    let per_tensor: usize = layout.tensors.iter().map(|t| names.host_name(&t.name).len() + 8 * t.shape.len() + 4 * t.numel() + 96).sum();
    per_tensor + 64
}

/// `raw_data` of one tensor: its little-endian bytes, starting on an 8-byte boundary of the
/// finished buffer (the schema's `force_align: 8`). The builder writes back to front and
/// finishes with the buffer's length a multiple of its largest alignment (8, from the `dims`
/// vectors), so a position is 8-aligned when the bytes written after it are a multiple of 8:
/// padding pushed before the vector makes the data's start one.
fn raw_data_vector<'b>(b: &mut FlatBufferBuilder<'b>, values: &[f32]) -> WIPOffset<Vector<'b, u8>> {
    let len = values.len() * 4;
    let pad = (8 - (b.unfinished_data().len() + len) % 8) % 8;
    for _ in 0..pad {
        b.push(0u8);
    }
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    b.create_vector(&bytes)
}

/// Marker types for the two tables (what flatc generates as `Parameter<'a>` / `Adapter<'a>`).
struct ParameterTable;
struct AdapterTable;

impl<'a> Follow<'a> for ParameterTable {
    type Inner = Table<'a>;
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Table<'a> {
        // SAFETY: the caller's contract (a verified buffer, a table at loc).
        unsafe { Table::new(buf, loc) }
    }
}

impl<'a> Follow<'a> for AdapterTable {
    type Inner = Table<'a>;
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Table<'a> {
        // SAFETY: the caller's contract (a verified buffer, a table at loc).
        unsafe { Table::new(buf, loc) }
    }
}

impl Verifiable for ParameterTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> std::result::Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<&str>>("name", parameter_table::NAME, false)?
            .visit_field::<ForwardsUOffset<Vector<'_, i64>>>("dims", parameter_table::DIMS, false)?
            .visit_field::<i32>("data_type", parameter_table::DATA_TYPE, false)?
            .visit_field::<ForwardsUOffset<Vector<'_, u8>>>("raw_data", parameter_table::RAW_DATA, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for AdapterTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> std::result::Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i32>("format_version", adapter_table::FORMAT_VERSION, false)?
            .visit_field::<i32>("adapter_version", adapter_table::ADAPTER_VERSION, false)?
            .visit_field::<i32>("model_version", adapter_table::MODEL_VERSION, false)?
            .visit_field::<ForwardsUOffset<Vector<'_, ForwardsUOffset<ParameterTable>>>>("parameters", adapter_table::PARAMETERS, false)?
            .finish();
        Ok(())
    }
}

/// One parameter of an adapter read back ([`read_adapter`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterParameter {
    pub name: String,
    pub dims: Vec<i64>,
    /// The ONNX element type number (1: float).
    pub data_type: i32,
    pub raw_data: Vec<u8>,
}

/// An adapter read back and checked ([`read_adapter`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterContents {
    pub format_version: i32,
    pub versions: AdapterVersions,
    pub parameters: Vec<AdapterParameter>,
}

/// Bytes per element of the element types an adapter of libpdiff's can hold.
fn element_size(data_type: i32) -> Option<usize> {
    match data_type {
        1 | 6 | 12 => Some(4),       // float, int32, uint32
        2 | 3 | 9 => Some(1),        // uint8, int8, bool
        4 | 5 | 10 | 16 => Some(2),  // uint16, int16, float16, bfloat16
        7 | 11 | 13 | 14 => Some(8), // int64, double, uint64, complex64
        15 => Some(16),              // complex128
        17..=20 => Some(1),          // float8 variants
        _ => None,
    }
}

/// Read and check adapter bytes the way ONNX Runtime does before using them (identifier,
/// FlatBuffers verification, format version), then each parameter: a name, dims, a known
/// element type and exactly the bytes its dims need. `what` names the adapter in errors (a
/// file name); every error names the field or parameter that is wrong.
pub fn read_adapter(bytes: &[u8], what: &str) -> Result<AdapterContents> {
    let bad = |message: String| Error::invalid(format!("adapter {what}"), message);
    if bytes.len() < 8 {
        return Err(bad(format!("{} bytes: too short for an adapter (truncated?)", bytes.len())));
    }
    if &bytes[4..8] != FILE_IDENTIFIER.as_bytes() {
        return Err(bad(format!("file identifier is {:?}, not {FILE_IDENTIFIER:?}: not an ONNX Runtime adapter", String::from_utf8_lossy(&bytes[4..8]))));
    }
    let opts = VerifierOptions::default();
    let root = flatbuffers::root_with_opts::<AdapterTable>(&opts, bytes).map_err(|e| bad(format!("damaged or truncated: {e}")))?;
    // SAFETY: `root` was verified above: every field read below has the type it was verified as.
    let get_i32 = |slot| unsafe { root.get::<i32>(slot, Some(0)) }.unwrap_or(0);
    let format_version = get_i32(adapter_table::FORMAT_VERSION);
    if format_version != FORMAT_VERSION {
        return Err(bad(format!("format_version is {format_version}: this libpdiff (and ONNX Runtime 1.31) reads version {FORMAT_VERSION} only")));
    }
    let versions = AdapterVersions { adapter_version: get_i32(adapter_table::ADAPTER_VERSION), model_version: get_i32(adapter_table::MODEL_VERSION) };
    // SAFETY: verified as a vector of Parameter tables.
    let params = unsafe { root.get::<ForwardsUOffset<Vector<'_, ForwardsUOffset<ParameterTable>>>>(adapter_table::PARAMETERS, None) }
        .ok_or_else(|| bad("has no parameters field".into()))?;
    let mut parameters = Vec::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        // SAFETY: each field verified with the type read here.
        let name = unsafe { p.get::<ForwardsUOffset<&str>>(parameter_table::NAME, None) }.ok_or_else(|| bad(format!("parameter {i} has no name")))?;
        let dims =
            unsafe { p.get::<ForwardsUOffset<Vector<'_, i64>>>(parameter_table::DIMS, None) }.ok_or_else(|| bad(format!("parameter '{name}' has no dims")))?;
        let data_type = unsafe { p.get::<i32>(parameter_table::DATA_TYPE, Some(0)) }.unwrap_or(0);
        let raw = unsafe { p.get::<ForwardsUOffset<Vector<'_, u8>>>(parameter_table::RAW_DATA, None) }
            .ok_or_else(|| bad(format!("parameter '{name}' has no raw_data")))?;
        let dims: Vec<i64> = dims.iter().collect();
        let size = element_size(data_type).ok_or_else(|| bad(format!("parameter '{name}': data_type {data_type} is not a tensor element type")))?;
        let numel = dims.iter().try_fold(1u64, |acc, &d| u64::try_from(d).ok().and_then(|d| acc.checked_mul(d)));
        let need = numel.and_then(|n| n.checked_mul(size as u64)).ok_or_else(|| bad(format!("parameter '{name}': dims {dims:?} are negative or overflow")))?;
        if need != raw.len() as u64 {
            return Err(bad(format!("parameter '{name}': dims {dims:?} need {need} bytes of data_type {data_type}, raw_data holds {}", raw.len())));
        }
        parameters.push(AdapterParameter { name: name.to_string(), dims, data_type, raw_data: raw.bytes().to_vec() });
    }
    Ok(AdapterContents { format_version, versions, parameters })
}
