//! JSON from other tools, read strictly: an object that names a key twice is refused, naming the
//! key (serde_json, like most parsers, would silently keep the last value). Used for safetensors
//! headers, conditions files and bundle manifests.
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// Nesting accepted before a document is refused (serde_json stops at 128 too).
const MAX_NESTING: usize = 128;

/// Check that no object anywhere in the JSON document `bytes` repeats a key. The error names the
/// first repeated key and where it is (a JSON pointer such as `/conditions/c00.safetensors`).
/// Syntax errors are reported too; the caller parses the document for its content afterwards.
pub fn check_unique_keys(bytes: &[u8]) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Unique { at: String::new(), depth: 0 }.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())
}

/// One JSON value at pointer `at`, checked recursively.
struct Unique {
    at: String,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth >= MAX_NESTING {
            return Err(serde::de::Error::custom(format!("nesting deeper than {MAX_NESTING} at '{}'", self.at)));
        }
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = format!("{}/{}", self.at, key.replace('~', "~0").replace('/', "~1"));
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("key '{key}' appears twice in the same object (at '{at}')")));
            }
            map.next_value_seed(Unique { at, depth: self.depth + 1 })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_NESTING {
            return Err(serde::de::Error::custom(format!("nesting deeper than {MAX_NESTING} at '{}'", self.at)));
        }
        let mut i = 0usize;
        while seq.next_element_seed(Unique { at: format!("{}/{i}", self.at), depth: self.depth + 1 })?.is_some() {
            i += 1;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_unique_keys;

    #[test]
    fn repeated_keys_are_named_with_their_place() {
        assert!(check_unique_keys(br#"{"a": 1, "b": [1, {"c": 2}]}"#).is_ok());
        let e = check_unique_keys(br#"{"a": 1, "a": 2}"#).unwrap_err();
        assert!(e.contains("key 'a' appears twice") && e.contains("'/a'"), "{e}");
        let e = check_unique_keys(br#"{"conditions": {"x.st": [1], "y": [2], "x.st": [3]}}"#).unwrap_err();
        assert!(e.contains("'/conditions/x.st'"), "{e}");
        let e = check_unique_keys(br#"[{"k": 1}, {"k": 1, "k": 2}]"#).unwrap_err();
        assert!(e.contains("'/1/k'"), "{e}");
        assert!(check_unique_keys(b"{").is_err());
        assert!(check_unique_keys(b"{} x").is_err());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(check_unique_keys(deep.as_bytes()).is_err());
    }
}
