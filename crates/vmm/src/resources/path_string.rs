//! Fields upstream deserializes as a `PathBuf`: the same strings, but serde's texts say
//! `expected path string` (e.g. ``invalid type: integer `5`, expected path string``).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

struct PathVisitor;

impl Visitor<'_> for PathVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("path string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// A `PathBuf`-like field's string; an `Option` of it is missing-as-`None` without a serde
/// `default` (which would change serde's `invalid length` count for an array body).
pub(crate) struct PathString(pub(crate) String);

impl<'de> Deserialize<'de> for PathString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_string(PathVisitor).map(PathString)
    }
}

/// For a required `PathBuf` field.
pub(crate) fn required<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    PathString::deserialize(d).map(|p| p.0)
}

/// For an `Option<PathBuf>` field (use with `#[serde(default)]`).
pub(crate) fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<PathString>::deserialize(d).map(|p| p.map(|p| p.0))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::required")]
        #[allow(dead_code)]
        a: String,
        #[serde(default, deserialize_with = "super::optional")]
        b: Option<String>,
    }

    #[test]
    fn texts_are_pathbufs() {
        let err = |json: &str| serde_json::from_str::<T>(json).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"a":5}"#),
            "invalid type: integer `5`, expected path string at line 1 column 6"
        );
        assert_eq!(
            err(r#"{"a":"x","b":[]}"#),
            "invalid type: sequence, expected path string at line 1 column 13"
        );
        assert_eq!(err(r#"{"b":"x"}"#), "missing field `a` at line 1 column 9");
        let t: T = serde_json::from_str(r#"{"a":"x","b":null}"#).unwrap();
        assert_eq!(t.b, None);
        let t: T = serde_json::from_str(r#"{"a":"x"}"#).unwrap();
        assert_eq!(t.b, None);
    }
}
