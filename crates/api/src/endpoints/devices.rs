//! Single-body, pre-boot resources whose request is the body as is: `/vsock`, `/entropy`,
//! `/serial`, `/logger`, `/metrics`, `/cpu-config`, `/hotplug/memory`.

use squib_vmm::VmmAction;
use squib_vmm::resources::vsock::VsockDeviceConfig;

use crate::request_error::{RequestError, parse_body};
use crate::routing::ParsedRequest;

pub fn parse_put_vsock(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    let config: VsockDeviceConfig = parse_body(body)?;
    // `vsock_id` is deprecated (docs/api-contract.md §3.6).
    let deprecated = config.vsock_id.is_some();
    Ok(ParsedRequest::action(VmmAction::SetVsockDevice(config)).deprecated(deprecated))
}

pub fn parse_put_entropy(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::SetEntropyDevice(
        parse_body(body)?,
    )))
}

pub fn parse_put_serial(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::SetSerial(parse_body(
        body,
    )?)))
}

pub fn parse_put_logger(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::ConfigureLogger(
        parse_body(body)?,
    )))
}

pub fn parse_put_metrics(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::ConfigureMetrics(
        parse_body(body)?,
    )))
}

pub fn parse_put_cpu_config(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::PutCpuConfiguration(
        parse_body(body)?,
    )))
}

pub fn parse_put_hotplug_memory(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::SetMemoryHotplug(
        parse_body(body)?,
    )))
}

pub fn parse_patch_hotplug_memory(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::UpdateMemoryHotplugSize(
        parse_body(body)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_id_is_deprecated() {
        let parsed = parse_put_vsock(br#"{"vsock_id":"v","guest_cid":3,"uds_path":"/v"}"#).unwrap();
        assert!(matches!(
            parsed,
            ParsedRequest::Action {
                deprecated: true,
                ..
            }
        ));
        let parsed = parse_put_vsock(br#"{"guest_cid":3,"uds_path":"/v"}"#).unwrap();
        assert!(matches!(
            parsed,
            ParsedRequest::Action {
                deprecated: false,
                ..
            }
        ));
    }
}
