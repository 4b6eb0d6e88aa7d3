//! `/balloon`, `/balloon/statistics`, `/balloon/hinting/{start,stop,status}`.

use squib_vmm::VmmAction;
use squib_vmm::resources::balloon::StartHintingCmd;

use crate::endpoints::reads::GetRequest;
use crate::request::{ParsedRequest, RequestError, parse_body};
use crate::routing::Segments;

fn hinting_path(seg: Option<&str>) -> String {
    format!("/hinting/{}", seg.unwrap_or(""))
}

pub(crate) fn parse_get_balloon(mut segments: Segments<'_>) -> Result<ParsedRequest, RequestError> {
    match segments.next() {
        None => Ok(ParsedRequest::Get(GetRequest::Balloon)),
        Some("statistics") => Ok(ParsedRequest::Get(GetRequest::BalloonStatistics)),
        Some("hinting") => match segments.next() {
            Some("status") => Ok(ParsedRequest::Get(GetRequest::BalloonHintingStatus)),
            other => Err(RequestError::generic(format!(
                "Unrecognized GET request path `{}`.",
                hinting_path(other)
            ))),
        },
        Some(other) => Err(RequestError::generic(format!(
            "Unrecognized GET request path `{other}`."
        ))),
    }
}

pub(crate) fn parse_put(body: &[u8]) -> Result<ParsedRequest, RequestError> {
    Ok(ParsedRequest::action(VmmAction::SetBalloonDevice(
        parse_body(body)?,
    )))
}

/// PATCH works with or without a body; which sub-path decides what the body must be.
pub(crate) fn parse_patch(
    body: &[u8],
    mut segments: Segments<'_>,
) -> Result<ParsedRequest, RequestError> {
    let has_body = !body.is_empty();
    match (segments.next(), has_body) {
        (Some("statistics"), true) => Ok(ParsedRequest::action(
            VmmAction::UpdateBalloonStatistics(parse_body(body)?),
        )),
        (Some("hinting"), _) => match segments.next() {
            Some("start") => {
                let cmd = if has_body {
                    parse_body(body)?
                } else {
                    StartHintingCmd::default()
                };
                Ok(ParsedRequest::action(VmmAction::StartFreePageHinting(cmd)))
            }
            Some("stop") => Ok(ParsedRequest::action(VmmAction::StopFreePageHinting)),
            other => Err(RequestError::generic(format!(
                "Unrecognized PATCH request path `{}`.",
                hinting_path(other)
            ))),
        },
        (_, true) => Ok(ParsedRequest::action(VmmAction::UpdateBalloon(parse_body(
            body,
        )?))),
        (_, false) => Err(RequestError::generic("Empty PATCH request.")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> String {
        parse_get_balloon(path.split_terminator('/'))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unrecognized_paths() {
        assert_eq!(get("foo"), "Unrecognized GET request path `foo`.");
        assert_eq!(get("hinting"), "Unrecognized GET request path `/hinting/`.");
        assert_eq!(
            get("hinting/x"),
            "Unrecognized GET request path `/hinting/x`."
        );
        let err = parse_patch(b"", "hinting/go".split_terminator('/')).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unrecognized PATCH request path `/hinting/go`."
        );
        let err = parse_patch(b"", "statistics".split_terminator('/')).unwrap_err();
        assert_eq!(err.to_string(), "Empty PATCH request.");
        assert_eq!(
            parse_patch(b"", "hinting/start".split_terminator('/')).unwrap(),
            ParsedRequest::action(VmmAction::StartFreePageHinting(StartHintingCmd::default()))
        );
    }
}
