//! `PUT /snapshot/create` and `PUT /snapshot/load`.

use serde::de::Error as _;
use squib_vmm::VmmAction;
use squib_vmm::resources::snapshot::LoadSnapshotConfig;

use crate::request::{ParsedRequest, RequestError, parse_body};

pub(crate) fn parse_put(body: &[u8], sub: Option<&str>) -> Result<ParsedRequest, RequestError> {
    match sub {
        Some("create") => Ok(ParsedRequest::action(VmmAction::CreateSnapshot(
            parse_body(body)?,
        ))),
        Some("load") => {
            let config: LoadSnapshotConfig = parse_body(body)?;
            let deprecated = config.is_deprecated();
            // The backend rule is reported as a serde error without a position, like upstream.
            let params = config
                .into_params()
                .map_err(|text| RequestError::SerdeJson(serde_json::Error::custom(text)))?;
            Ok(ParsedRequest::action(VmmAction::LoadSnapshot(params)).deprecated(deprecated))
        }
        None => Err(RequestError::generic("Missing snapshot operation type.")),
        Some(other) => Err(RequestError::generic(format!(
            "Invalid request method and/or path: PUT /snapshot/{other}."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(body: &str, sub: Option<&str>) -> String {
        parse_put(body.as_bytes(), sub).unwrap_err().to_string()
    }

    #[test]
    fn mem_backend_texts_have_no_position() {
        assert_eq!(
            fault(r#"{"snapshot_path":"s"}"#, Some("load")),
            "An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required."
        );
        assert_eq!(fault(r#"{}"#, None), "Missing snapshot operation type.");
        assert_eq!(
            fault(r#"{}"#, Some("x")),
            "Invalid request method and/or path: PUT /snapshot/x."
        );
    }
}
