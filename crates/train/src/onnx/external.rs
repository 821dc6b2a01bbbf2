//! Writing a graph whose initializers would make it too large for one ONNX protobuf (2 GiB):
//! the largest initializers' bytes move to an external data file beside the graph
//! (docs/bundle-format.md, "External data"), in the layout ONNX's own tools and ONNX Runtime
//! read: `data_location = EXTERNAL`, `external_data` = location, offset, length.
use super::proto::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};
use pdiff_core::bundle::PROTOBUF_LIMIT;
use pdiff_core::error::{Error, Result};
use prost::Message;

/// Each external tensor starts at a multiple of this many bytes of its file (zero padding in
/// between): a runtime that maps the file can map each tensor in place.
pub const EXTERNAL_ALIGN: usize = 4096;

/// A graph ready to write: its protobuf and, when some initializers are external, the bytes of
/// its data file.
pub struct EncodedGraph {
    pub graph: Vec<u8>,
    pub data: Option<Vec<u8>>,
}

/// Serialize `model` as `file`. When its protobuf would exceed `limit` bytes (at most
/// [`PROTOBUF_LIMIT`]), initializers with raw data move to the external file `data_file`,
/// largest first, until the graph fits (or all of them, when `limit` is lower than what the
/// rest of the graph takes: tests use 0). The data file lists them in the graph's order.
pub fn encode(mut model: ModelProto, file: &str, data_file: &str, limit: u64) -> Result<EncodedGraph> {
    let limit = limit.min(PROTOBUF_LIMIT);
    let mut size = model.encoded_len() as u64;
    if size <= limit {
        return Ok(EncodedGraph { graph: model.encode_to_vec(), data: None });
    }
    let Some(graph) = model.graph.as_mut() else {
        return Ok(EncodedGraph { graph: model.encode_to_vec(), data: None });
    };
    let raw_len = |i: usize| graph.initializer[i].raw_data.as_ref().map_or(0, Vec::len);
    let mut order: Vec<usize> = (0..graph.initializer.len()).filter(|&i| raw_len(i) > 0).collect();
    // Largest first (stable: ties keep the graph's order), so that the fewest tensors move.
    order.sort_by_key(|&i| std::cmp::Reverse(raw_len(i)));
    let mut external = vec![false; graph.initializer.len()];
    for i in order {
        if size <= limit {
            break;
        }
        external[i] = true;
        // The data leaves; three short external_data entries take its place.
        size = size.saturating_sub(raw_len(i) as u64) + 128;
    }
    let mut data = Vec::new();
    for (t, _) in graph.initializer.iter_mut().zip(&external).filter(|(_, &e)| e) {
        let raw = t.raw_data.take().unwrap_or_default();
        data.resize(data.len().next_multiple_of(EXTERNAL_ALIGN), 0);
        let offset = data.len();
        data.extend_from_slice(&raw);
        let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![entry("location", data_file.into()), entry("offset", offset.to_string()), entry("length", raw.len().to_string())];
    }
    let bytes = model.encode_to_vec();
    if bytes.len() as u64 > PROTOBUF_LIMIT {
        return Err(Error::invalid(
            "graph",
            format!("{file}: {} bytes with every initializer in {data_file}: more than the {PROTOBUF_LIMIT} bytes one ONNX protobuf can hold", bytes.len()),
        ));
    }
    Ok(EncodedGraph { graph: bytes, data: Some(data) })
}
