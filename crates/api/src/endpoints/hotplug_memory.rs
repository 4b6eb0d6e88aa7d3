//! `PUT`/`PATCH /hotplug/memory` (`GET` is a snapshot read).

use squib_vmm::VmmAction;

use crate::request::{ParsedRequest, RequestError, parse_body};

pub(crate) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::SetMemoryHotplug(
        parse_body(body)?,
    )))
}

pub(crate) fn parse_patch(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::UpdateMemoryHotplugSize(
        parse_body(body)?,
    )))
}
