//! `PUT /actions`.

use serde::Deserialize;
use squib_vmm::VmmAction;

use crate::request::{ParsedRequest, RequestError, parse_body};

// Declaration order is the order serde lists the variants in its error text.
#[derive(Deserialize)]
enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

pub(crate) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let ActionBody { action_type } = parse_body(body)?;
    let action = match action_type {
        ActionType::FlushMetrics => VmmAction::FlushMetrics,
        ActionType::InstanceStart => VmmAction::StartMicroVm,
        ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
    };
    Ok(ParsedRequest::action(action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_and_errors() {
        assert_eq!(
            parse_put(br#"{"action_type":"InstanceStart"}"#).unwrap(),
            ParsedRequest::action(VmmAction::StartMicroVm)
        );
        let err = parse_put(br#"{"action_type":"Reboot"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "An error occurred when deserializing the json body of a request: unknown variant `Reboot`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel` at line 1 column 23."
        );
    }
}
