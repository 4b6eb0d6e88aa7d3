//! What the route table's parsers produce: a [`ParsedRequest`], or the [`RequestError`] that
//! refuses the request before it reaches the VMM (docs/api-contract.md §3); and the two checks every parser
//! shares (path id, JSON body).

use squib_vmm::VmmAction;

use crate::endpoints::reads::GetRequest;

/// A request that passed HTTP, routing, id and JSON checks.
#[derive(Debug, PartialEq)]
pub enum ParsedRequest {
    /// Answered from the published snapshot.
    Get(GetRequest),
    /// Sent to the VMM loop.
    Action { action: VmmAction, deprecated: bool },
}

impl ParsedRequest {
    pub(crate) fn action(action: VmmAction) -> Self {
        Self::Action {
            action,
            deprecated: false,
        }
    }

    /// Marks a request that used a deprecated field (`Deprecation: true`, docs/api-contract.md §3.6).
    pub(crate) fn deprecated(self, deprecated: bool) -> Self {
        match self {
            Self::Action { action, .. } => Self::Action { action, deprecated },
            other => other,
        }
    }
}

/// A request refused by the API layer; always a 400 with the display text as fault message.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("The ID cannot be empty.")]
    EmptyId,
    #[error("API Resource IDs can only contain alphanumeric characters and underscores.")]
    InvalidId,
    #[error("Invalid request method and/or path: {method} {path}.")]
    InvalidPathMethod { method: String, path: String },
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    SerdeJson(#[from] serde_json::Error),
    #[error("{0}")]
    Generic(String),
}

impl RequestError {
    pub(crate) fn generic(message: impl Into<String>) -> Self {
        Self::Generic(message.into())
    }
}

/// Checks a path id the way upstream does: non-empty, `_` or Unicode alphanumerics only.
pub(crate) fn checked_id(id: Option<&str>) -> Result<&str, RequestError> {
    let id = id.unwrap_or("");
    if id.is_empty() {
        return Err(RequestError::EmptyId);
    }
    if !id.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        return Err(RequestError::InvalidId);
    }
    Ok(id)
}

/// Deserializes a request body; serde's own text becomes the fault message.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rules() {
        assert!(matches!(checked_id(None), Err(RequestError::EmptyId)));
        assert!(matches!(checked_id(Some("")), Err(RequestError::EmptyId)));
        assert!(matches!(
            checked_id(Some("a-b")),
            Err(RequestError::InvalidId)
        ));
        assert!(matches!(
            checked_id(Some("a.b")),
            Err(RequestError::InvalidId)
        ));
        assert_eq!(checked_id(Some("röot_1")).unwrap(), "röot_1");
    }

    #[test]
    fn serde_text_is_wrapped_with_final_period() {
        let err = parse_body::<serde_json::Value>(b"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "An error occurred when deserializing the json body of a request: EOF while parsing a value at line 1 column 0."
        );
    }
}
