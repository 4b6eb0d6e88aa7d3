//! The MMDS data store behind `PUT`/`PATCH`/`GET /mmds`: one JSON document with a size limit
//! on its compact serialization. Object keys come out sorted (serde_json's default map).

use serde_json::Value;

/// Why a data-store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmdsStoreError {
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    #[error("The MMDS patch request doesn't fit.")]
    DataStoreLimitExceeded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmdsStore {
    /// `None` until the first successful `PUT`.
    data: Option<Value>,
    limit: usize,
}

impl MmdsStore {
    pub fn new(limit: usize) -> Self {
        Self { data: None, limit }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    fn fits(&self, value: &Value) -> bool {
        serde_json::to_vec(value)
            .map(|v| v.len())
            .unwrap_or(usize::MAX)
            <= self.limit
    }

    /// Replaces the whole document.
    pub fn put(&mut self, value: Value) -> Result<(), MmdsStoreError> {
        if !self.fits(&value) {
            return Err(MmdsStoreError::DataStoreLimitExceeded);
        }
        self.data = Some(value);
        Ok(())
    }

    /// Applies an RFC 7396 merge patch; nothing changes if the result would not fit.
    pub fn patch(&mut self, patch: &Value) -> Result<(), MmdsStoreError> {
        let current = self.data.as_ref().ok_or(MmdsStoreError::NotInitialized)?;
        let mut merged = current.clone();
        json_patch::merge(&mut merged, patch);
        if !self.fits(&merged) {
            return Err(MmdsStoreError::DataStoreLimitExceeded);
        }
        self.data = Some(merged);
        Ok(())
    }

    /// The document as `GET /mmds` shows it: `{}` when nothing (or `null`) is stored.
    pub fn to_json(&self) -> String {
        match &self.data {
            None | Some(Value::Null) => "{}".to_string(),
            Some(value) => sorted(value).to_string(),
        }
    }

    pub fn data(&self) -> Option<&Value> {
        self.data.as_ref()
    }
}

/// Rebuilds objects with sorted keys, whichever map serde_json was compiled with.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn put_patch_get_and_limit() {
        let mut store = MmdsStore::new(40);
        assert_eq!(store.to_json(), "{}");
        assert_eq!(
            store.patch(&json!({"a":1})),
            Err(MmdsStoreError::NotInitialized)
        );
        store.put(json!({"z":1,"a":{"y":2,"b":3}})).unwrap();
        assert_eq!(store.to_json(), r#"{"a":{"b":3,"y":2},"z":1}"#);
        store.patch(&json!({"z":null,"a":{"c":4}})).unwrap();
        assert_eq!(store.to_json(), r#"{"a":{"b":3,"c":4,"y":2}}"#);
        let before = store.clone();
        assert_eq!(
            store.patch(&json!({"long":"x".repeat(40)})),
            Err(MmdsStoreError::DataStoreLimitExceeded)
        );
        assert_eq!(store, before);
        assert_eq!(
            store.put(json!("x".repeat(39))),
            Err(MmdsStoreError::DataStoreLimitExceeded)
        );
        store.put(json!("x".repeat(38))).unwrap();
        store.put(Value::Null).unwrap();
        assert_eq!(store.to_json(), "{}");
    }
}
