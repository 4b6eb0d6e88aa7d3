//! `PUT /vsock`.

use squib_vmm::VmmAction;
use squib_vmm::resources::vsock::VsockDeviceConfig;

use crate::request::{ParsedRequest, RequestError, parse_body};

pub(crate) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let config: VsockDeviceConfig = parse_body(body)?;
    // `vsock_id` is deprecated (docs/api-contract.md §3.6).
    let deprecated = config.vsock_id.is_some();
    Ok(ParsedRequest::action(VmmAction::SetVsockDevice(config)).deprecated(deprecated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_id_is_deprecated() {
        let parsed = parse_put(br#"{"vsock_id":"v","guest_cid":3,"uds_path":"/v"}"#).unwrap();
        assert!(matches!(
            parsed,
            ParsedRequest::Action {
                deprecated: true,
                ..
            }
        ));
        let parsed = parse_put(br#"{"guest_cid":3,"uds_path":"/v"}"#).unwrap();
        assert!(matches!(
            parsed,
            ParsedRequest::Action {
                deprecated: false,
                ..
            }
        ));
    }
}
