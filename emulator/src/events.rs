//! The metric import API's side of the emulator: what a batch of custom events must look like, read the way
//! LaunchDarkly reads `POST /v2/event-data-import/{project}/{environment}` (gzip or not).

use std::io::Read;

use serde_json::Value;

use crate::segments::ApiFailure;

/// The events of one request body, each checked: `kind` "custom", a `key`, a `creationDate` in Unix milliseconds,
/// a non-empty `contextKeys` map of kind to key, and a number for `metricValue` when there is one.
pub fn parse_batch(raw: &[u8], encoding: Option<String>) -> Result<Vec<Value>, ApiFailure> {
    let body = match encoding.as_deref() {
        None | Some("identity") => raw.to_vec(),
        Some("gzip") => {
            let mut body = Vec::new();
            flate2::read::GzDecoder::new(raw)
                .read_to_end(&mut body)
                .map_err(|e| ApiFailure::invalid(format!("the gzip body cannot be read: {e}")))?;
            body
        }
        Some(other) => {
            return Err(ApiFailure::invalid(format!(
                "unsupported Content-Encoding `{other}`; send gzip or nothing"
            )));
        }
    };
    let events: Vec<Value> = serde_json::from_slice(&body).map_err(|e| {
        ApiFailure::invalid(format!("the body must be a JSON array of events: {e}"))
    })?;
    if events.is_empty() {
        return Err(ApiFailure::invalid("the batch holds no events"));
    }
    for (i, event) in events.iter().enumerate() {
        check_event(event)
            .map_err(|problem| ApiFailure::invalid(format!("events[{i}]: {problem}")))?;
    }
    Ok(events)
}

fn check_event(event: &Value) -> Result<(), String> {
    if event["kind"] != "custom" {
        return Err("`kind` must be \"custom\"".into());
    }
    if event["key"].as_str().is_none_or(str::is_empty) {
        return Err("`key` (the metric's event key) is required".into());
    }
    if !event["creationDate"].is_u64() {
        return Err("`creationDate` must be Unix milliseconds".into());
    }
    let contexts = event["contextKeys"]
        .as_object()
        .filter(|keys| !keys.is_empty())
        .ok_or("`contextKeys` must map at least one context kind to a key")?;
    if let Some((kind, _)) = contexts
        .iter()
        .find(|(_, key)| key.as_str().is_none_or(str::is_empty))
    {
        return Err(format!("`contextKeys.{kind}` must be a non-empty string"));
    }
    if !event["metricValue"].is_null() && !event["metricValue"].is_number() {
        return Err("`metricValue` must be a number".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    fn event() -> Value {
        json!({"kind": "custom", "key": "order", "creationDate": 1_700_000_000_000u64,
               "contextKeys": {"user": "u1"}, "metricValue": 12.5})
    }

    #[test]
    fn gzip_and_plain_bodies_read_the_same() {
        let body = json!([event()]).to_string();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(body.as_bytes()).unwrap();
        let zipped = gzip.finish().unwrap();
        assert_eq!(
            parse_batch(&zipped, Some("gzip".into())).unwrap(),
            parse_batch(body.as_bytes(), None).unwrap()
        );
    }

    #[test]
    fn each_field_is_checked() {
        let mut cases = Vec::new();
        for (field, value, problem) in [
            ("kind", json!("feature"), "`kind` must be \"custom\""),
            ("key", json!(""), "`key`"),
            ("creationDate", json!("yesterday"), "`creationDate`"),
            ("contextKeys", json!({}), "`contextKeys` must map"),
            ("contextKeys", json!({"user": 7}), "`contextKeys.user`"),
            ("metricValue", json!("12"), "`metricValue` must be a number"),
        ] {
            let mut bad = event();
            bad[field] = value;
            cases.push((bad, problem));
        }
        for (bad, problem) in cases {
            let body = json!([event(), bad]).to_string();
            let err = parse_batch(body.as_bytes(), None).unwrap_err();
            assert!(
                err.message.starts_with("events[1]: ") && err.message.contains(problem),
                "{}",
                err.message
            );
        }
    }
}
