//! `PUT /boot-source`.

use squib_vmm::VmmAction;

use crate::request_error::{RequestError, parse_body};
use crate::routing::ParsedRequest;

pub fn parse_put_boot_source(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::ConfigureBootSource(
        parse_body(body)?,
    )))
}
