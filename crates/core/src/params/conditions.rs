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
    /// A dimension of at least 1 and, when given, one distinct non-empty name per dimension.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(Error::invalid("condition", "the condition dimension must be at least 1"));
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
    /// checkpoint needs exactly one vector, and every entry must name a checkpoint.
    ///
    /// Formats, by extension:
    /// - `.json`: `{"names": ["d0", ...], "conditions": {"c00.safetensors": [0, 1, ...], ...}}`
    ///   (`names` optional), or just the `{"file": [values]}` object;
    /// - `.csv`: one line per checkpoint, `file,v0,v1,...`; a first line whose value fields
    ///   are not all numbers is a header giving the names (`file,d0,d1,...`).
    pub fn from_file(path: &Path, sources: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::invalid("conditions", format!("{}: {message}", path.display()));
        let (names, entries) = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => parse_json(&text).map_err(bad)?,
            Some("csv") => parse_csv(&text).map_err(bad)?,
            _ => return Err(bad("the file must be .json or .csv".into())),
        };
        let dim = entries.first().map(|e| e.1.len()).ok_or_else(|| bad("no condition vectors".into()))?;
        if let Some((key, v)) = entries.iter().find(|e| e.1.len() != dim) {
            return Err(bad(format!("'{key}' has {} values, '{}' has {dim}", v.len(), entries[0].0)));
        }
        let file_name = |s: &str| Path::new(s).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut by_key: BTreeMap<&str, &Vec<f32>> = BTreeMap::new();
        for (key, v) in &entries {
            if by_key.insert(key.as_str(), v).is_some() {
                return Err(bad(format!("'{key}' is listed twice")));
            }
        }
        let mut values = Vec::with_capacity(sources.len() * dim);
        let mut used = std::collections::BTreeSet::new();
        for src in sources {
            let name = file_name(src);
            let key = [src.as_str(), name.as_str()].into_iter().find(|k| by_key.contains_key(k));
            let key = key.ok_or_else(|| bad(format!("no condition vector for checkpoint '{name}'")))?;
            values.extend_from_slice(by_key[key]);
            used.insert(key.to_string());
        }
        if let Some((key, _)) = entries.iter().find(|(k, _)| !used.contains(k)) {
            return Err(bad(format!("'{key}' is not one of the {} checkpoints", sources.len())));
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
