//! `PUT /drives/{id}`.

use squib_vmm::VmmAction;
use squib_vmm::config::drive::BlockDeviceConfig;

use crate::request_error::{RequestError, checked_id, parse_body};
use crate::routing::ParsedRequest;

pub fn parse_put_drive(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let config: BlockDeviceConfig = parse_body(body)?;
    if config.drive_id != id {
        return Err(RequestError::generic(
            "The id from the path does not match the id from the body!",
        ));
    }
    Ok(ParsedRequest::action(VmmAction::InsertBlockDevice(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_checks_come_before_the_body() {
        let err = parse_put_drive(b"not json", Some("a-b")).unwrap_err();
        assert!(matches!(err, RequestError::InvalidId));
        let err = parse_put_drive(
            br#"{"drive_id":"other","is_root_device":false,"path_on_host":"/x"}"#,
            Some("rootfs"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "The id from the path does not match the id from the body!"
        );
    }
}
