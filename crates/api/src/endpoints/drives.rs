//! `PUT`/`PATCH`/`DELETE /drives/{id}`.

use squib_vmm::VmmAction;
use squib_vmm::action::DeviceKind;
use squib_vmm::resources::drive::{BlockDeviceConfig, BlockDeviceUpdateConfig};

use crate::request::{ParsedRequest, RequestError, checked_id, parse_body};

const ID_MISMATCH: &str = "The id from the path does not match the id from the body!";

pub(crate) fn parse_put(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let config: BlockDeviceConfig = parse_body(body)?;
    if config.drive_id != id {
        return Err(RequestError::generic(ID_MISMATCH));
    }
    Ok(ParsedRequest::action(VmmAction::InsertBlockDevice(config)))
}

pub(crate) fn parse_patch(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let update: BlockDeviceUpdateConfig = parse_body(body)?;
    if update.drive_id != id {
        return Err(RequestError::generic(ID_MISMATCH));
    }
    Ok(ParsedRequest::action(VmmAction::UpdateBlockDevice(update)))
}

pub(crate) fn parse_delete(id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    Ok(ParsedRequest::action(VmmAction::RemoveDevice(
        DeviceKind::Drive,
        id.to_string(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_checks_come_before_the_body() {
        let err = parse_put(b"not json", Some("a-b")).unwrap_err();
        assert!(matches!(err, RequestError::InvalidId));
        let err = parse_put(
            br#"{"drive_id":"other","is_root_device":false,"path_on_host":"/x"}"#,
            Some("rootfs"),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), ID_MISMATCH);
        let err = parse_patch(br#"{"drive_id":"b"}"#, Some("a")).unwrap_err();
        assert_eq!(err.to_string(), ID_MISMATCH);
        assert!(matches!(parse_delete(Some("")), Err(RequestError::EmptyId)));
    }
}
