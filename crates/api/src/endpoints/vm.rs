//! `PATCH /vm`: pause and resume.

use serde::Deserialize;
use squib_vmm::VmmAction;

use crate::request::{ParsedRequest, RequestError, parse_body};

#[derive(Deserialize)]
enum VmState {
    Paused,
    Resumed,
}

#[derive(Deserialize)]
// Upstream's type name: serde spells the Rust name (not a `rename`) in its error texts.
#[serde(deny_unknown_fields)]
struct Vm {
    state: VmState,
}

pub(crate) fn parse_patch(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let Vm { state } = parse_body(body)?;
    Ok(ParsedRequest::action(match state {
        VmState::Paused => VmmAction::Pause,
        VmState::Resumed => VmmAction::Resume,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_errors() {
        assert_eq!(
            parse_patch(br#"{"state":"Paused"}"#).unwrap(),
            ParsedRequest::action(VmmAction::Pause)
        );
        assert_eq!(
            parse_patch(br#"{"state":"Stopped"}"#)
                .unwrap_err()
                .to_string(),
            "An error occurred when deserializing the json body of a request: unknown variant `Stopped`, expected `Paused` or `Resumed` at line 1 column 18."
        );
        assert_eq!(
            parse_patch(br#"{"x":1}"#).unwrap_err().to_string(),
            "An error occurred when deserializing the json body of a request: unknown field `x`, expected `state` at line 1 column 4."
        );
    }
}
