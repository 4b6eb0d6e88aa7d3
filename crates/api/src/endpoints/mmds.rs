//! `PUT`/`PATCH`/`GET /mmds` and `PUT /mmds/config`.

use serde_json::Value;
use squib_vmm::VmmAction;
use squib_vmm::resources::mmds::MmdsConfigRequest;

use crate::request::{ParsedRequest, RequestError, parse_body};

pub(crate) fn parse_put(body: &[u8], sub: Option<&str>) -> Result<ParsedRequest, RequestError> {
    match sub {
        None => Ok(ParsedRequest::action(VmmAction::PutMmds(parse_body::<
            Value,
        >(body)?))),
        Some("config") => {
            let request: MmdsConfigRequest = parse_body(body)?;
            let deprecated = request.is_deprecated();
            Ok(
                ParsedRequest::action(VmmAction::SetMmdsConfiguration(request))
                    .deprecated(deprecated),
            )
        }
        Some(other) => Err(RequestError::generic(format!(
            "Unrecognized PUT request path `{other}`."
        ))),
    }
}

pub(crate) fn parse_patch(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::PatchMmds(parse_body::<
        Value,
    >(body)?)))
}
