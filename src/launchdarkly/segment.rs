//! A LaunchDarkly segment as ldsync reads and changes it: the segment JSON LaunchDarkly answers (parsed into
//! [`Segment`]), and the semantic patch that adds or removes targets. Pure; no I/O.

use serde::Deserialize;
use serde_json::json;

use super::SegmentKind;
use crate::vocab::Action;

/// What ldsync needs to know of a segment before changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub kind: SegmentKind,
    pub version: u64,
    /// A big segment's only context kind.
    pub big_context_kind: Option<String>,
    /// The included targets of the sync's context kind. LaunchDarkly lists them for standard segments only.
    pub members: Option<Vec<String>>,
    /// The excluded targets of the sync's context kind, sorted (standard segments; empty for big ones).
    /// LaunchDarkly refuses to include a key it holds as excluded.
    pub excluded: Vec<String>,
    /// How many contexts the segment includes (of the sync's kind for standard segments; all for big ones, as
    /// `_unboundedMetadata.includedCount` says: `None` when LaunchDarkly does not say).
    pub member_count: Option<u64>,
    /// Every individual target of a standard segment, of all kinds, included or excluded: the 15,000 limit.
    pub total_targets: u64,
}

/// The semantic patch that adds or removes included targets of one context kind.
pub fn semantic_patch(
    environment: &str,
    context_kind: &str,
    action: Action,
    keys: &[String],
    comment: &str,
) -> String {
    let kind = match action {
        Action::Add => "addIncludedTargets",
        Action::Remove => "removeIncludedTargets",
    };
    json!({
        "environmentKey": environment,
        "comment": comment,
        "instructions": [{"kind": kind, "contextKind": context_kind, "values": keys}],
    })
    .to_string()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SegmentRep {
    version: u64,
    #[serde(default)]
    unbounded: bool,
    unbounded_context_kind: Option<String>,
    #[serde(default)]
    included: Vec<String>,
    #[serde(default)]
    excluded: Vec<String>,
    #[serde(default)]
    included_contexts: Vec<ContextTargets>,
    #[serde(default)]
    excluded_contexts: Vec<ContextTargets>,
    #[serde(rename = "_unboundedMetadata")]
    unbounded_metadata: Option<UnboundedMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContextTargets {
    context_kind: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UnboundedMetadata {
    #[serde(default)]
    included_count: u64,
}

/// Reads a segment representation. User keys may sit in `included` or under `includedContexts`; both count.
pub fn parse_segment(body: &str, context_kind: &str) -> Result<Segment, String> {
    let rep: SegmentRep = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if rep.unbounded {
        let member_count = rep.unbounded_metadata.map(|m| m.included_count);
        return Ok(Segment {
            kind: SegmentKind::Big,
            version: rep.version,
            big_context_kind: Some(rep.unbounded_context_kind.unwrap_or_else(|| "user".into())),
            members: None,
            excluded: Vec::new(),
            member_count,
            total_targets: member_count.unwrap_or_default(),
        });
    }
    let of_kind = |lists: &[ContextTargets]| {
        lists
            .iter()
            .filter(|c| c.context_kind == context_kind)
            .flat_map(|c| c.values.iter().cloned())
            .collect::<Vec<_>>()
    };
    let targets_of_kind = |contexts: &[ContextTargets], users: &[String]| {
        let mut keys = of_kind(contexts);
        if context_kind == "user" {
            keys.extend(users.iter().cloned());
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    };
    let members = targets_of_kind(&rep.included_contexts, &rep.included);
    let excluded = targets_of_kind(&rep.excluded_contexts, &rep.excluded);
    let listed =
        |lists: &[ContextTargets]| lists.iter().map(|c| c.values.len() as u64).sum::<u64>();
    let total_targets = (rep.included.len() + rep.excluded.len()) as u64
        + listed(&rep.included_contexts)
        + listed(&rep.excluded_contexts);
    Ok(Segment {
        kind: SegmentKind::Standard,
        version: rep.version,
        big_context_kind: None,
        member_count: Some(members.len() as u64),
        members: Some(members),
        excluded,
        total_targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn standard_segments_give_the_included_targets_of_the_sync_kind() {
        let body = r#"{"key":"s","version":3,"included":["u2","u1"],"excluded":["u9"],
            "includedContexts":[{"contextKind":"user","values":["u3","u1"]},{"contextKind":"organization","values":["o1"]}],
            "excludedContexts":[{"contextKind":"organization","values":["o7"]}],"unbounded":false}"#;
        let users = parse_segment(body, "user").unwrap();
        assert_eq!(users.kind, SegmentKind::Standard);
        assert_eq!(
            users.members.as_deref(),
            Some(&["u1".to_string(), "u2".into(), "u3".into()][..])
        );
        assert_eq!(
            (users.member_count, users.total_targets, users.version),
            (Some(3), 7, 3)
        );
        assert_eq!(users.excluded, ["u9"]);
        let orgs = parse_segment(body, "organization").unwrap();
        assert_eq!(orgs.members, Some(vec!["o1".to_string()]));
        assert_eq!(orgs.excluded, ["o7"]);
    }

    #[test]
    fn big_segments_give_counts_not_members() {
        let body = r#"{"key":"b","version":1,"unbounded":true,"unboundedContextKind":"organization","included":[],
            "_unboundedMetadata":{"includedCount":12,"excludedCount":0}}"#;
        let big = parse_segment(body, "organization").unwrap();
        assert_eq!(big.kind, SegmentKind::Big);
        assert_eq!(big.members, None);
        assert_eq!(big.member_count, Some(12));
        assert_eq!(big.big_context_kind.as_deref(), Some("organization"));
        // Without the metadata LaunchDarkly has not said how many: not "none", which would let a first mirror run
        // take a populated segment for an empty one.
        let unsaid =
            r#"{"key":"b","version":1,"unbounded":true,"unboundedContextKind":"organization"}"#;
        assert_eq!(
            parse_segment(unsaid, "organization").unwrap().member_count,
            None
        );
    }

    #[test]
    fn semantic_patches_name_the_environment_kind_and_keys() {
        let body = semantic_patch(
            "production",
            "organization",
            Action::Remove,
            &["o1".into(), "o2".into()],
            "c",
        );
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            value,
            json!({"environmentKey": "production", "comment": "c", "instructions": [
                {"kind": "removeIncludedTargets", "contextKind": "organization", "values": ["o1", "o2"]}]})
        );
    }
}
