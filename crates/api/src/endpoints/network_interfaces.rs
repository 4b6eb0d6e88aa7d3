//! `PUT`/`PATCH`/`DELETE /network-interfaces/{id}`.

use squib_vmm::VmmAction;
use squib_vmm::action::DeviceKind;
use squib_vmm::resources::net::{NetworkInterfaceConfig, NetworkInterfaceUpdateConfig};

use crate::request::{ParsedRequest, RequestError, checked_id, parse_body};

fn mismatch(path: &str, body: &str) -> RequestError {
    RequestError::generic(format!(
        "The id from the path [{path}] does not match the id from the body [{body}]!"
    ))
}

pub(crate) fn parse_put(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let config: NetworkInterfaceConfig = parse_body(body)?;
    if config.iface_id != id {
        return Err(mismatch(id, &config.iface_id));
    }
    Ok(ParsedRequest::action(VmmAction::InsertNetworkDevice(
        config,
    )))
}

pub(crate) fn parse_patch(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let update: NetworkInterfaceUpdateConfig = parse_body(body)?;
    if update.iface_id != id {
        return Err(mismatch(id, &update.iface_id));
    }
    Ok(ParsedRequest::action(VmmAction::UpdateNetworkInterface(
        update,
    )))
}

pub(crate) fn parse_delete(id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    Ok(ParsedRequest::action(VmmAction::RemoveDevice(
        DeviceKind::NetworkInterface,
        id.to_string(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_names_both_ids() {
        let err = parse_put(br#"{"iface_id":"b","host_dev_name":"t"}"#, Some("a")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The id from the path [a] does not match the id from the body [b]!"
        );
    }
}
