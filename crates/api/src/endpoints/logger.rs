//! `PUT /logger`.

use squib_vmm::VmmAction;

use crate::request::{ParsedRequest, RequestError, parse_body};

pub(crate) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::ConfigureLogger(
        parse_body(body)?,
    )))
}
