//! `PUT`/`PATCH /pmem/{id}`.

use squib_vmm::VmmAction;
use squib_vmm::resources::pmem::{PmemConfig, PmemUpdateConfig};

use crate::request_error::{RequestError, checked_id, parse_body};
use crate::routing::ParsedRequest;

const ID_MISMATCH: &str = "The id from the path does not match the id from the body!";

pub fn parse_put_pmem(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let config: PmemConfig = parse_body(body)?;
    if config.id != id {
        return Err(RequestError::generic(ID_MISMATCH));
    }
    Ok(ParsedRequest::action(VmmAction::InsertPmemDevice(config)))
}

pub fn parse_patch_pmem(body: &[u8], id: Option<&str>) -> Result<ParsedRequest, RequestError> {
    let id = checked_id(id)?;
    let update: PmemUpdateConfig = parse_body(body)?;
    if update.id != id {
        return Err(RequestError::generic(ID_MISMATCH));
    }
    Ok(ParsedRequest::action(VmmAction::UpdatePmemDevice(update)))
}
