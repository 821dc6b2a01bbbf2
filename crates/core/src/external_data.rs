//! ONNX external data, as a bundle may use it (docs/bundle-format.md, "External data"): which
//! tensors of a graph keep their bytes in another file, and where.
//!
//! One ONNX protobuf cannot exceed 2 GiB, so a large graph keeps its initializers' bytes in a
//! data file beside it: each such `TensorProto` has `data_location = EXTERNAL` and
//! `external_data` entries `location` (the file), `offset` and `length` (bytes). A bundle is
//! untrusted input and ONNX Runtime, given such a graph from memory, would otherwise resolve the
//! location against the working directory: [`scan`] lists every external reference of a graph
//! so that the loader can check each one against the bundle's own, verified data file before
//! any runtime sees the graph, and refuses external data anywhere else than the main graph's
//! initializers (the only place libpdiff writes it, and the only place ONNX Runtime's in-memory
//! API replaces).
//!
//! This is a minimal protobuf reader over the fields that can hold tensors (no dependency, no
//! copy: a length-delimited field is a slice of the input), so the serve-only build has it too.

/// One tensor whose bytes live in an external file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalRef {
    /// The initializer's name.
    pub tensor: String,
    /// `location`: the file, relative to the graph's directory, as written in the graph.
    pub location: String,
    /// `offset` in bytes (0 when absent).
    pub offset: u64,
    /// `length` in bytes: exactly numel x element size.
    pub length: u64,
}

impl ExternalRef {
    /// offset + length (checked in [`scan`] not to overflow).
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Nesting of graphs inside attributes deeper than this is refused (a crafted graph must not
/// exhaust the stack; real models nest a few levels: a Loop body holding an If).
const MAX_DEPTH: usize = 64;

/// Every external-data reference of an ONNX model, in the order of the main graph's
/// initializers; an error (a sentence, without the file name) when the protobuf is malformed
/// in the fields read here, or when external data is declared where this library does not
/// accept it: outside the main graph's initializers, with raw_data as well, without a location
/// or a length, with an unknown key, or with a length that is not numel x element size.
pub fn scan(model: &[u8]) -> Result<Vec<ExternalRef>, String> {
    let mut refs = Vec::new();
    for field in Fields::new(model) {
        let (number, value) = field?;
        match (number, value) {
            (7, Value::Bytes(g)) => graph(g, true, 0, &mut refs)?,
            (20, Value::Bytes(info)) => {
                // TrainingInfoProto: initialization = 1, algorithm = 2 (graphs).
                for f in Fields::new(info) {
                    if let (1 | 2, Value::Bytes(g)) = f? {
                        graph(g, false, 1, &mut refs)?;
                    }
                }
            }
            (25, Value::Bytes(function)) => {
                // FunctionProto: node = 7, attribute_proto = 11.
                for f in Fields::new(function) {
                    match f? {
                        (7, Value::Bytes(n)) => node(n, 1, &mut refs)?,
                        (11, Value::Bytes(a)) => attribute(a, 1, &mut refs)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(refs)
}

fn graph(g: &[u8], main: bool, depth: usize, refs: &mut Vec<ExternalRef>) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("graphs nested more than {MAX_DEPTH} levels deep"));
    }
    for f in Fields::new(g) {
        match f? {
            (1, Value::Bytes(n)) => node(n, depth, refs)?,
            (5, Value::Bytes(t)) => tensor(t, main, refs)?,
            (15, Value::Bytes(s)) => sparse(s, refs)?,
            _ => {}
        }
    }
    Ok(())
}

fn node(n: &[u8], depth: usize, refs: &mut Vec<ExternalRef>) -> Result<(), String> {
    for f in Fields::new(n) {
        if let (5, Value::Bytes(a)) = f? {
            attribute(a, depth, refs)?;
        }
    }
    Ok(())
}

fn attribute(a: &[u8], depth: usize, refs: &mut Vec<ExternalRef>) -> Result<(), String> {
    for f in Fields::new(a) {
        match f? {
            (5 | 10, Value::Bytes(t)) => tensor(t, false, refs)?,
            (6 | 11, Value::Bytes(g)) => graph(g, false, depth + 1, refs)?,
            (22 | 23, Value::Bytes(s)) => sparse(s, refs)?,
            _ => {}
        }
    }
    Ok(())
}

fn sparse(s: &[u8], refs: &mut Vec<ExternalRef>) -> Result<(), String> {
    for f in Fields::new(s) {
        if let (1 | 2, Value::Bytes(t)) = f? {
            tensor(t, false, refs)?;
        }
    }
    Ok(())
}

/// Bytes per element of an ONNX data type whose elements are whole bytes; None for strings and
/// sub-byte types (never stored externally here).
fn element_size(data_type: u64) -> Option<u64> {
    Some(match data_type {
        2 | 3 | 9 | 17..=20 => 1,
        4 | 5 | 10 | 16 => 2,
        1 | 6 | 12 => 4,
        7 | 11 | 13 | 14 => 8,
        15 => 16,
        _ => return None,
    })
}

fn tensor(t: &[u8], main_initializer: bool, refs: &mut Vec<ExternalRef>) -> Result<(), String> {
    let mut name = String::new();
    let mut dims: Vec<u64> = Vec::new();
    let mut data_type = 0;
    let mut has_raw = false;
    let mut location_external = false;
    let mut entries: Vec<(String, String)> = Vec::new();
    for f in Fields::new(t) {
        match f? {
            (1, Value::Varint(v)) => dims.push(v),
            (1, Value::Bytes(packed)) => {
                let mut r = Reader { buf: packed, pos: 0 };
                while r.pos < packed.len() {
                    dims.push(r.varint()?);
                }
            }
            (2, Value::Varint(v)) => data_type = v,
            (8, Value::Bytes(b)) => name = String::from_utf8_lossy(b).into_owned(),
            (9, Value::Bytes(_)) => has_raw = true,
            (13, Value::Bytes(entry)) => {
                let (mut key, mut value) = (String::new(), String::new());
                for e in Fields::new(entry) {
                    match e? {
                        (1, Value::Bytes(k)) => key = utf8(k, "an external_data key")?,
                        (2, Value::Bytes(v)) => value = utf8(v, "an external_data value")?,
                        _ => {}
                    }
                }
                entries.push((key, value));
            }
            (14, Value::Varint(v)) => location_external = v == 1,
            _ => {}
        }
    }
    if !location_external && entries.is_empty() {
        return Ok(());
    }
    let what = format!("tensor '{name}'");
    if !main_initializer {
        return Err(format!("{what} keeps its data in an external file, which only the main graph's initializers may"));
    }
    if !location_external {
        return Err(format!("{what} has external_data entries but its data_location is not EXTERNAL"));
    }
    if has_raw {
        return Err(format!("{what} has both raw_data and external data"));
    }
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for (key, value) in entries {
        let number = || value.parse::<u64>().map_err(|_| format!("{what}: external data {key} '{value}' is not a byte count"));
        match key.as_str() {
            "location" => location = Some(value.clone()),
            "offset" => offset = number()?,
            "length" => length = Some(number()?),
            "checksum" => {}
            other => return Err(format!("{what}: unknown external data key '{other}'")),
        }
    }
    let location = location.ok_or_else(|| format!("{what}: external data without a location"))?;
    let length = length.ok_or_else(|| format!("{what}: external data without a length"))?;
    let size = element_size(data_type).ok_or_else(|| format!("{what}: data type {data_type} cannot be stored as external data here"))?;
    let expected = dims.iter().try_fold(size, |a, &d| a.checked_mul(d)).ok_or_else(|| format!("{what}: shape {dims:?} overflows"))?;
    if length != expected {
        return Err(format!("{what}: external data length {length} bytes, but its shape {dims:?} needs {expected}"));
    }
    if offset.checked_add(length).is_none() {
        return Err(format!("{what}: external data offset {offset} + length {length} overflows"));
    }
    refs.push(ExternalRef { tensor: name, location, offset, length });
    Ok(())
}

fn utf8(b: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

/// A protobuf field's value: a varint, or the bytes of a length-delimited field (fixed-width
/// fields are skipped).
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or("not a valid ONNX protobuf: truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("not a valid ONNX protobuf: varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n)).filter(|&e| e <= self.buf.len());
        let end = end.ok_or("not a valid ONNX protobuf: a field runs past the end of its message")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

/// The fields of one message, in order.
struct Fields<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { r: Reader { buf, pos: 0 }, failed: false }
    }

    fn field(&mut self) -> Result<(u64, Value<'a>), String> {
        let key = self.r.varint()?;
        let number = key >> 3;
        let value = match key & 7 {
            0 => Value::Varint(self.r.varint()?),
            1 => {
                self.r.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = self.r.varint()?;
                Value::Bytes(self.r.take(len)?)
            }
            5 => {
                self.r.take(4)?;
                Value::Fixed
            }
            w => return Err(format!("not a valid ONNX protobuf: wire type {w} of field {number}")),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), String>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.pos >= self.r.buf.len() {
            return None;
        }
        let f = self.field();
        self.failed = f.is_err();
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes_field(n: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(n << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn varint_field(n: u64, v: u64, out: &mut Vec<u8>) {
        varint(n << 3, out);
        varint(v, out);
    }
    fn entry(k: &str, v: &str) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v.as_bytes(), &mut e);
        e
    }
    /// A float tensor [dims] named `name` with external data at `location`.
    fn ext_tensor(name: &str, dims: &[u64], location: &str, offset: u64, length: u64) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            varint_field(1, d, &mut t);
        }
        varint_field(2, 1, &mut t);
        bytes_field(8, name.as_bytes(), &mut t);
        bytes_field(13, &entry("location", location), &mut t);
        bytes_field(13, &entry("offset", &offset.to_string()), &mut t);
        bytes_field(13, &entry("length", &length.to_string()), &mut t);
        varint_field(14, 1, &mut t);
        t
    }
    fn model_with_initializer(t: &[u8]) -> Vec<u8> {
        let mut g = Vec::new();
        bytes_field(5, t, &mut g);
        let mut m = Vec::new();
        varint_field(1, 8, &mut m);
        bytes_field(7, &g, &mut m);
        m
    }

    #[test]
    fn finds_main_graph_references() {
        let m = model_with_initializer(&ext_tensor("w", &[4, 8], "decoder.onnx.data", 4096, 128));
        let refs = scan(&m).unwrap();
        assert_eq!(refs, vec![ExternalRef { tensor: "w".into(), location: "decoder.onnx.data".into(), offset: 4096, length: 128 }]);
        assert_eq!(refs[0].end(), 4224);
    }

    #[test]
    fn refuses_what_the_loader_cannot_check() {
        // Wrong length for the shape.
        let e = scan(&model_with_initializer(&ext_tensor("w", &[4, 8], "d", 0, 100))).unwrap_err();
        assert!(e.contains("'w'") && e.contains("needs 128"), "{e}");
        // External data inside a node attribute (a Constant's value).
        let mut attr = Vec::new();
        bytes_field(5, &ext_tensor("c", &[1], "d", 0, 4), &mut attr);
        let mut node = Vec::new();
        bytes_field(5, &attr, &mut node);
        let mut g = Vec::new();
        bytes_field(1, &node, &mut g);
        let mut m = Vec::new();
        bytes_field(7, &g, &mut m);
        let e = scan(&m).unwrap_err();
        assert!(e.contains("'c'") && e.contains("main graph's initializers"), "{e}");
        // Truncated protobuf.
        let m = model_with_initializer(&ext_tensor("w", &[4, 8], "d", 0, 128));
        assert!(scan(&m[..m.len() - 3]).unwrap_err().contains("not a valid ONNX protobuf"));
        // Unknown key.
        let mut t = ext_tensor("w", &[1], "d", 0, 4);
        bytes_field(13, &entry("basepath", "/"), &mut t);
        assert!(scan(&model_with_initializer(&t)).unwrap_err().contains("unknown external data key 'basepath'"));
    }

    #[test]
    fn inline_tensors_have_no_references() {
        let mut t = Vec::new();
        varint_field(1, 2, &mut t);
        varint_field(2, 1, &mut t);
        bytes_field(9, &[0; 8], &mut t);
        assert!(scan(&model_with_initializer(&t)).unwrap().is_empty());
        assert!(scan(&[]).unwrap().is_empty());
    }
}
