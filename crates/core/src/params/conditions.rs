//! Condition vectors of a conditional generator: one C-dimensional float vector per training
//! checkpoint (e.g. the 10-bit code of the task a checkpoint was trained on), and the file format
//! that maps checkpoint files to their vectors (docs/design.md, "Conditional generation").
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What a conditional generator is conditioned on: the dimension C and, optionally, a name per
/// dimension (recorded in the bundle's manifest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConditionSpec {
    pub dim: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

impl ConditionSpec {
    /// A dimension of 1 ..= [`crate::limits::MAX_CONDITION_DIM`] and, when given, one distinct
    /// non-empty name per dimension.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(Error::invalid("condition", "the condition dimension must be at least 1"));
        }
        if self.dim > crate::limits::MAX_CONDITION_DIM {
            return Err(Error::invalid("condition", format!("C = {} values per condition (at most {})", self.dim, crate::limits::MAX_CONDITION_DIM)));
        }
        if let Some(names) = &self.names {
            if names.len() != self.dim {
                return Err(Error::invalid("condition", format!("{} names for a condition of dimension {}", names.len(), self.dim)));
            }
            for (i, n) in names.iter().enumerate() {
                if n.is_empty() || names[..i].contains(n) {
                    return Err(Error::invalid("condition", format!("name {i} ({n:?}) is empty or repeated")));
                }
            }
        }
        Ok(())
    }
}

/// The condition vectors of K checkpoints, row-major K x C, in the checkpoints' order.
#[derive(Clone, Debug, PartialEq)]
pub struct Conditions {
    pub spec: ConditionSpec,
    pub values: Vec<f32>,
}

impl Conditions {
    /// K vectors of `spec.dim` floats (row-major); every value must be finite.
    pub fn new(spec: ConditionSpec, values: Vec<f32>) -> Result<Self> {
        spec.validate()?;
        if values.is_empty() || !values.len().is_multiple_of(spec.dim) {
            return Err(Error::invalid("conditions", format!("{} values is not a positive multiple of the condition dimension {}", values.len(), spec.dim)));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid("conditions", format!("checkpoint {}: condition value {} is not finite", i / spec.dim, values[i])));
        }
        Ok(Conditions { spec, values })
    }

    /// Number of vectors (K).
    pub fn len(&self) -> usize {
        self.values.len() / self.spec.dim
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.spec.dim..(i + 1) * self.spec.dim]
    }

    /// Read a conditions file and order its vectors like `sources` (the checkpoints' paths).
    /// Entries are matched by file name (`c07.safetensors`) or by the path as listed. Every
    /// checkpoint needs exactly one vector, every entry must name exactly one checkpoint, and no
    /// entry may be given twice: a repeated key, a file name that two checkpoints share (give
    /// their paths) and two entries for one checkpoint (its path and its file name) are refused,
    /// naming both.
    ///
    /// Formats, by extension:
    /// - `.json`: `{"names": ["d0", ...], "conditions": {"c00.safetensors": [0, 1, ...], ...}}`
    ///   (`names` optional), or just the `{"file": [values]}` object;
    /// - `.csv`: one line per checkpoint, `file,v0,v1,...`; a first line whose value fields
    ///   are not all numbers is a header giving the names (`file,d0,d1,...`).
    pub fn from_file(path: &Path, sources: &[String]) -> Result<Self> {
        let bytes = crate::files::read_regular(path, crate::limits::MAX_CONDITIONS_BYTES).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::invalid("conditions", format!("{}: {message}", path.display()));
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        let (names, entries) = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                crate::json::check_unique_keys(text.as_bytes()).map_err(|e| bad(format!("not valid JSON for conditions: {e}")))?;
                parse_json(&text).map_err(bad)?
            }
            Some("csv") => parse_csv(&text).map_err(bad)?,
            _ => return Err(bad("the file must be .json or .csv".into())),
        };
        let dim = entries.first().map(|e| e.1.len()).ok_or_else(|| bad("no condition vectors".into()))?;
        if let Some((key, v)) = entries.iter().find(|e| e.1.len() != dim) {
            return Err(bad(format!("'{key}' has {} values, '{}' has {dim}", v.len(), entries[0].0)));
        }
        if let Some((key, x)) = entries.iter().find_map(|(k, v)| v.iter().find(|x| !x.is_finite()).map(|x| (k, x))) {
            return Err(bad(format!("'{key}': condition value {x} is not finite")));
        }
        let file_name = |s: &str| Path::new(s).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut by_key: BTreeMap<&str, &Vec<f32>> = BTreeMap::new();
        for (key, v) in &entries {
            if by_key.insert(key.as_str(), v).is_some() {
                return Err(bad(format!("'{key}' is listed twice")));
            }
        }
        // Each entry names exactly one checkpoint, by its path or its file name.
        let mut entry_of: Vec<Option<&str>> = vec![None; sources.len()];
        for (key, _) in &entries {
            let matches: Vec<usize> = (0..sources.len()).filter(|&i| sources[i] == *key || file_name(&sources[i]) == *key).collect();
            match matches.as_slice() {
                [] => return Err(bad(format!("'{key}' is not one of the {} checkpoints", sources.len()))),
                [i] => {
                    if let Some(other) = entry_of[*i].replace(key) {
                        return Err(bad(format!("checkpoint '{}' is given twice, as '{other}' and as '{key}'", sources[*i])));
                    }
                }
                [a, b, ..] => return Err(bad(format!("'{key}' names two checkpoints, '{}' and '{}': give their paths instead", sources[*a], sources[*b]))),
            }
        }
        let mut values = Vec::with_capacity(sources.len() * dim);
        for (src, key) in sources.iter().zip(&entry_of) {
            let key = key.ok_or_else(|| bad(format!("no condition vector for checkpoint '{}'", file_name(src))))?;
            values.extend_from_slice(by_key[key]);
        }
        Conditions::new(ConditionSpec { dim, names }, values).map_err(|e| match e {
            Error::InvalidArgument { message, .. } => bad(message),
            other => other,
        })
    }
}

type Entries = (Option<Vec<String>>, Vec<(String, Vec<f32>)>);

fn parse_json(text: &str) -> std::result::Result<Entries, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = value.as_object().ok_or("expected a JSON object")?;
    let (names, table) = match obj.get("conditions") {
        Some(c) => {
            let names = match obj.get("names") {
                None => None,
                Some(n) => Some(
                    n.as_array()
                        .ok_or("'names' must be an array of strings")?
                        .iter()
                        .map(|s| s.as_str().map(str::to_string).ok_or("'names' must be an array of strings"))
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                ),
            };
            (names, c.as_object().ok_or("'conditions' must be an object: file -> [values]")?)
        }
        None => (None, obj),
    };
    let entries = table
        .iter()
        .map(|(key, v)| {
            let arr = v.as_array().ok_or_else(|| format!("'{key}': expected an array of numbers"))?;
            let values = arr
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| format!("'{key}': {x} is not a number")))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok((key.clone(), values))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok((names, entries))
}

fn parse_csv(text: &str) -> std::result::Result<Entries, String> {
    let mut names = None;
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 2 {
            return Err(format!("line {}: expected file,value[,value...]", i + 1));
        }
        let parsed: Vec<Option<f32>> = fields[1..].iter().map(|f| f.parse::<f32>().ok()).collect();
        if parsed.iter().all(Option::is_some) {
            entries.push((fields[0].to_string(), parsed.into_iter().flatten().collect()));
        } else if entries.is_empty() && names.is_none() {
            names = Some(fields[1..].iter().map(|s| s.to_string()).collect());
        } else {
            return Err(format!("line {}: a value is not a number", i + 1));
        }
    }
    Ok((names, entries))
}
