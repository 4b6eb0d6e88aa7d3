//! The MMDS data store behind `PUT`/`PATCH`/`GET /mmds`: one JSON document with a size limit
//! on its compact serialization. Object keys come out sorted (serde_json's default map).

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::Value;

/// Where the store publishes every accepted document for the guest-facing MMDS to read
/// (the same type as `squib_mmds::MmdsData`); `Value::Null` until the first `PUT`.
pub(crate) type MmdsPublished = Arc<ArcSwap<Value>>;

/// Why a data-store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmdsStoreError {
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    #[error("The MMDS patch request doesn't fit.")]
    DataStoreLimitExceeded,
}

#[derive(Clone, Debug)]
pub struct MmdsStore {
    /// `None` until the first successful `PUT`.
    data: Option<Value>,
    limit: usize,
    /// Shared by every clone: snapshots never write to it.
    published: MmdsPublished,
}

impl PartialEq for MmdsStore {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data && self.limit == other.limit
    }
}

impl Eq for MmdsStore {}

impl MmdsStore {
    pub fn new(limit: usize) -> Self {
        Self {
            data: None,
            limit,
            published: Arc::new(ArcSwap::from_pointee(Value::Null)),
        }
    }

    /// The handle the guest-facing MMDS reads; it always holds the latest accepted document.
    pub fn published(&self) -> MmdsPublished {
        self.published.clone()
    }

    fn set(&mut self, value: Value) {
        self.published.store(Arc::new(value.clone()));
        self.data = Some(value);
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
        self.set(value);
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
        self.set(merged);
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

    #[test]
    fn accepted_documents_are_published() {
        let mut store = MmdsStore::new(100);
        let published = store.published();
        assert_eq!(**published.load(), Value::Null);
        store.put(json!({"a":1})).unwrap();
        assert_eq!(**published.load(), json!({"a":1}));
        store.patch(&json!({"b":2})).unwrap();
        assert_eq!(**published.load(), json!({"a":1,"b":2}));
        assert!(store.put(json!("x".repeat(200))).is_err());
        assert_eq!(**published.load(), json!({"a":1,"b":2}));
    }
}
