//! `PUT`/`PATCH /network-interfaces/{id}`.

use squib_vmm::VmmAction;
use squib_vmm::resources::net::{NetworkInterfaceConfig, NetworkInterfaceUpdateConfig};

use crate::request_error::{RequestError, checked_id, parse_body};
use crate::routing::ParsedRequest;

fn mismatch(path: &str, body: &str) -> RequestError {
    RequestError::generic(format!(
        "The id from the path [{path}] does not match the id from the body [{body}]!"
    ))
}

pub fn parse_put_net(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let config: NetworkInterfaceConfig = parse_body(body)?;
    if config.iface_id != id {
        return Err(mismatch(id, &config.iface_id));
    }
    Ok(ParsedRequest::action(VmmAction::InsertNetworkDevice(
        config,
    )))
}

pub fn parse_patch_net(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let update: NetworkInterfaceUpdateConfig = parse_body(body)?;
    if update.iface_id != id {
        return Err(mismatch(id, &update.iface_id));
    }
    Ok(ParsedRequest::action(VmmAction::UpdateNetworkInterface(
        update,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_names_both_ids() {
        let err = parse_put_net(br#"{"iface_id":"b","host_dev_name":"t"}"#, Some("a")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The id from the path [a] does not match the id from the body [b]!"
        );
    }
}
