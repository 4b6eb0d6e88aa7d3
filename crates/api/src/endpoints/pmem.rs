//! `PUT`/`PATCH`/`DELETE /pmem/{id}`.

use squib_vmm::VmmAction;
use squib_vmm::action::DeviceKind;
use squib_vmm::resources::pmem::{PmemConfig, PmemDeviceUpdateConfig};

use crate::request::{ParsedRequest, RequestError, checked_id, parse_body};

const ID_MISMATCH: &str = "The id from the path does not match the id from the body!";

pub(crate) fn parse_put(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let config: PmemConfig = parse_body(body)?;
    if config.id != id {
        return Err(RequestError::generic(ID_MISMATCH));
    }
    Ok(ParsedRequest::action(VmmAction::InsertPmemDevice(config)))
}

pub(crate) fn parse_patch(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let update: PmemDeviceUpdateConfig = parse_body(body)?;
    if update.id != id {
        return Err(RequestError::generic(ID_MISMATCH));
    }
    Ok(ParsedRequest::action(VmmAction::UpdatePmemDevice(update)))
}

pub(crate) fn parse_delete(id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    Ok(ParsedRequest::action(VmmAction::RemoveDevice(
        DeviceKind::Pmem,
        id.to_string(),
    )))
}
