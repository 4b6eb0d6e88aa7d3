//! `PUT` and `PATCH /machine-config` (`GET` is a snapshot read).

use squib_vmm::VmmAction;
use squib_vmm::resources::machine_config::{MachineConfig, MachineConfigUpdate};

use crate::request::{ParsedRequest, RequestError, parse_body};

pub(crate) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let config: MachineConfig = parse_body(body)?;
    // Any cpu_template, even "None", is a deprecated field (docs/api-contract.md §3.6).
    let deprecated = config.cpu_template.is_some();
    Ok(ParsedRequest::action(VmmAction::PutMachineConfig(config)).deprecated(deprecated))
}

pub(crate) fn parse_patch(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let update: MachineConfigUpdate = parse_body(body)?;
    if update.is_empty() {
        return Err(RequestError::generic("Empty PATCH request."));
    }
    let deprecated = update.cpu_template.is_some();
    Ok(ParsedRequest::action(VmmAction::PatchMachineConfig(update)).deprecated(deprecated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_patch_is_refused() {
        assert_eq!(
            parse_patch(b"{}").unwrap_err().to_string(),
            "Empty PATCH request."
        );
    }

    #[test]
    fn cpu_template_marks_deprecation() {
        let parsed =
            parse_put(br#"{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"None"}"#).unwrap();
        assert!(matches!(
            parsed,
            ParsedRequest::Action {
                deprecated: true,
                ..
            }
        ));
        let parsed = parse_patch(br#"{"vcpu_count":2}"#).unwrap();
        assert!(matches!(
            parsed,
            ParsedRequest::Action {
                deprecated: false,
                ..
            }
        ));
    }

    #[test]
    fn integer_width_errors_match_serde() {
        let err = parse_put(br#"{"vcpu_count":256,"mem_size_mib":128}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "An error occurred when deserializing the json body of a request: invalid value: integer `256`, expected u8 at line 1 column 17."
        );
    }
}
