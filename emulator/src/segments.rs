//! Segments as LaunchDarkly keeps them, and the changes its API makes to them: the JSON representation, semantic
//! patch (all or nothing, idempotent, with LaunchDarkly's limits), and big-segment membership changes (`POST
//! …/contexts` and imports).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

/// LaunchDarkly accepts at most this many target operations in one request.
pub const MAX_TARGET_OPERATIONS: usize = 1_500;
/// A standard segment holds at most this many individual targets.
pub const MAX_STANDARD_TARGETS: usize = 15_000;

/// An error LaunchDarkly would answer: status, code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiFailure {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiFailure {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiFailure::new(400, "invalid_request", message)
    }
}

/// Targets by context kind.
pub type Targets = BTreeMap<String, BTreeSet<String>>;

/// One segment of one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub key: String,
    pub name: String,
    pub description: Option<String>,
    pub tags: BTreeSet<String>,
    pub creation_date: u64,
    pub last_modified: u64,
    pub version: u64,
    pub unbounded: bool,
    /// A big segment's one context kind.
    pub unbounded_context_kind: String,
    pub included: Targets,
    pub excluded: Targets,
}

impl Segment {
    pub fn new(key: &str, name: &str, unbounded: bool, context_kind: &str, now: u64) -> Self {
        Segment {
            key: key.into(),
            name: name.into(),
            description: None,
            tags: BTreeSet::new(),
            creation_date: now,
            last_modified: now,
            version: 1,
            unbounded,
            unbounded_context_kind: context_kind.into(),
            included: Targets::new(),
            excluded: Targets::new(),
        }
    }

    /// Every individual target, of every kind, included or excluded.
    pub fn target_count(&self) -> usize {
        count(&self.included) + count(&self.excluded)
    }

    /// The segment as `GET …/segments/{p}/{e}/{k}` returns it.
    pub fn representation(&self, project: &str, environment: &str) -> Value {
        let href = format!("/api/v2/segments/{project}/{environment}/{}", self.key);
        let mut rep = json!({
            "key": self.key,
            "name": self.name,
            "tags": self.tags,
            "creationDate": self.creation_date,
            "lastModifiedDate": self.last_modified,
            "version": self.version,
            "deleted": false,
            "generation": 1,
            "rules": [],
            "unbounded": self.unbounded,
            "_links": {"self": {"href": href, "type": "application/json"}},
            "_flags": [],
        });
        if let Some(description) = &self.description {
            rep["description"] = json!(description);
        }
        if self.unbounded {
            rep["included"] = json!([]);
            rep["unboundedContextKind"] = json!(self.unbounded_context_kind);
            rep["_unboundedMetadata"] = json!({
                "envId": environment,
                "segmentId": self.key,
                "version": self.version,
                "includedCount": count(&self.included),
                "excludedCount": count(&self.excluded),
                "lastModified": self.last_modified,
                "deleted": false,
            });
        } else {
            let (included, included_contexts) = split_user_kind(&self.included);
            let (excluded, excluded_contexts) = split_user_kind(&self.excluded);
            rep["included"] = json!(included);
            rep["excluded"] = json!(excluded);
            rep["includedContexts"] = included_contexts;
            rep["excludedContexts"] = excluded_contexts;
        }
        rep
    }

    /// Applies a semantic patch's instructions to a copy and returns it, or why LaunchDarkly would refuse them all.
    /// Also returns the role actions the instructions need.
    pub fn patched(
        &self,
        instructions: &[Value],
    ) -> Result<(Segment, BTreeSet<&'static str>), ApiFailure> {
        if instructions.is_empty() {
            return Err(ApiFailure::invalid(
                "a semantic patch needs at least one instruction",
            ));
        }
        let mut next = self.clone();
        let mut actions = BTreeSet::new();
        let mut operations = 0;
        for (i, instruction) in instructions.iter().enumerate() {
            let kind = instruction["kind"]
                .as_str()
                .ok_or_else(|| ApiFailure::invalid(format!("instructions[{i}] has no `kind`")))?;
            let change = Change::of(kind)
                .ok_or_else(|| ApiFailure::invalid(format!("unknown instruction kind `{kind}`")))?;
            match change {
                Change::Targets {
                    included,
                    add,
                    legacy,
                } => {
                    if self.unbounded {
                        return Err(ApiFailure::invalid(format!(
                            "`{kind}` does not apply to big segment `{}`; change its members with POST …/contexts",
                            self.key
                        )));
                    }
                    let context_kind = if legacy {
                        "user".to_string()
                    } else {
                        instruction["contextKind"]
                            .as_str()
                            .filter(|k| !k.is_empty())
                            .ok_or_else(|| {
                                ApiFailure::invalid(format!(
                                    "instructions[{i}] (`{kind}`) needs `contextKind`"
                                ))
                            })?
                            .to_string()
                    };
                    let values = string_list(&instruction["values"])
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| ApiFailure::invalid(format!("instructions[{i}] (`{kind}`) needs a non-empty `values` list of strings")))?;
                    operations += values.len();
                    actions.insert(if included {
                        "updateIncluded"
                    } else {
                        "updateExcluded"
                    });
                    let targets = if included {
                        &mut next.included
                    } else {
                        &mut next.excluded
                    };
                    change_targets(targets, &context_kind, values, add);
                }
                Change::Name => {
                    let name = instruction["value"].as_str().ok_or_else(|| {
                        ApiFailure::invalid(format!(
                            "instructions[{i}] (`updateName`) needs a string `value`"
                        ))
                    })?;
                    actions.insert("updateName");
                    next.name = name.to_string();
                }
                Change::Tags { add } => {
                    let values = string_list(&instruction["values"]).ok_or_else(|| {
                        ApiFailure::invalid(format!("instructions[{i}] (`{kind}`) needs `values`"))
                    })?;
                    actions.insert("updateTags");
                    for tag in values {
                        if add {
                            next.tags.insert(tag);
                        } else {
                            next.tags.remove(&tag);
                        }
                    }
                }
            }
        }
        if operations > MAX_TARGET_OPERATIONS {
            return Err(ApiFailure::invalid(format!(
                "the request has {operations} target operations, over the batch limit of {MAX_TARGET_OPERATIONS}"
            )));
        }
        next.check_targets()?;
        Ok((next, actions))
    }

    /// The role actions a big segment's `POST …/contexts` body needs: `updateIncluded` and/or `updateExcluded`.
    pub fn member_actions(body: &Value) -> BTreeSet<&'static str> {
        [
            ("included", "updateIncluded"),
            ("excluded", "updateExcluded"),
        ]
        .into_iter()
        .filter(|(side, _)| !body[side].is_null())
        .map(|(_, action)| action)
        .collect()
    }

    /// Applies a big segment's `POST …/contexts` body in place, all of it or nothing; returns whether anything
    /// changed. In place, because a big segment may hold millions of members: a copy per request would make a
    /// long sync quadratic.
    pub fn apply_members(&mut self, body: &Value) -> Result<bool, ApiFailure> {
        if !self.unbounded {
            return Err(ApiFailure::invalid(format!(
                "segment `{}` is not a big segment; change a standard segment's targets with a semantic patch",
                self.key
            )));
        }
        if Segment::member_actions(body).is_empty() {
            return Err(ApiFailure::invalid(
                "the body needs `included` or `excluded`",
            ));
        }
        let list = |side: &str, op: &str| -> Result<Vec<String>, ApiFailure> {
            let part = &body[side][op];
            if part.is_null() {
                return Ok(Vec::new());
            }
            string_list(part).ok_or_else(|| {
                ApiFailure::invalid(format!("`{side}.{op}` must be a list of strings"))
            })
        };
        let (include, uninclude) = (list("included", "add")?, list("included", "remove")?);
        let (exclude, unexclude) = (list("excluded", "add")?, list("excluded", "remove")?);
        let kind = self.unbounded_context_kind.clone();
        let empty = BTreeSet::new();
        let included = self.included.get(&kind).unwrap_or(&empty);
        let excluded = self.excluded.get(&kind).unwrap_or(&empty);
        let conflict = include
            .iter()
            .find(|k| (excluded.contains(*k) && !unexclude.contains(k)) || exclude.contains(k))
            .or_else(|| {
                exclude
                    .iter()
                    .find(|k| included.contains(*k) && !uninclude.contains(k))
            });
        if let Some(key) = conflict {
            return Err(ApiFailure::invalid(format!(
                "`{key}` ({kind}) would be both included and excluded in segment `{}`",
                self.key
            )));
        }
        let removed = change_targets(&mut self.included, &kind, uninclude, false)
            | change_targets(&mut self.excluded, &kind, unexclude, false);
        let added = change_targets(&mut self.included, &kind, include, true)
            | change_targets(&mut self.excluded, &kind, exclude, true);
        Ok(removed || added)
    }

    /// Applies a completed import's keys to a big segment's included members in place: added to them, or, with
    /// `replace`, in place of them. Returns whether anything changed. The keys are sorted once and merged with the
    /// members in one pass (`BTreeSet::append`), so ten imports of a million keys stay linear in the members.
    pub fn import_members(&mut self, keys: Vec<String>, replace: bool) -> bool {
        let kind = self.unbounded_context_kind.clone();
        let mut incoming: BTreeSet<String> = keys.into_iter().collect();
        let members = self.included.entry(kind.clone()).or_default();
        let changed = if replace {
            let changed = *members != incoming;
            *members = incoming;
            changed
        } else {
            let before = members.len();
            members.append(&mut incoming);
            members.len() != before
        };
        if members.is_empty() {
            self.included.remove(&kind);
        }
        changed
    }

    fn check_targets(&self) -> Result<(), ApiFailure> {
        for (kind, keys) in &self.included {
            if let Some(key) = self
                .excluded
                .get(kind)
                .and_then(|ex| keys.intersection(ex).next())
            {
                return Err(ApiFailure::invalid(format!(
                    "`{key}` ({kind}) would be both included and excluded in segment `{}`",
                    self.key
                )));
            }
        }
        if !self.unbounded && self.target_count() > MAX_STANDARD_TARGETS {
            return Err(ApiFailure::invalid(format!(
                "segment `{}` would hold {} targets; a standard segment holds at most {MAX_STANDARD_TARGETS}, use a big segment",
                self.key,
                self.target_count()
            )));
        }
        Ok(())
    }

    /// Whether anything a client can see differs, apart from the version and times.
    pub fn differs_from(&self, other: &Segment) -> bool {
        (&self.name, &self.tags, &self.included, &self.excluded)
            != (&other.name, &other.tags, &other.included, &other.excluded)
    }
}

enum Change {
    Targets {
        included: bool,
        add: bool,
        legacy: bool,
    },
    Name,
    Tags {
        add: bool,
    },
}

impl Change {
    fn of(kind: &str) -> Option<Change> {
        let targets = |included, add, legacy| {
            Some(Change::Targets {
                included,
                add,
                legacy,
            })
        };
        match kind {
            "addIncludedTargets" => targets(true, true, false),
            "removeIncludedTargets" => targets(true, false, false),
            "addExcludedTargets" => targets(false, true, false),
            "removeExcludedTargets" => targets(false, false, false),
            "addIncludedUsers" => targets(true, true, true),
            "removeIncludedUsers" => targets(true, false, true),
            "addExcludedUsers" => targets(false, true, true),
            "removeExcludedUsers" => targets(false, false, true),
            "updateName" => Some(Change::Name),
            "addTags" => Some(Change::Tags { add: true }),
            "removeTags" => Some(Change::Tags { add: false }),
            _ => None,
        }
    }
}

/// Adds or removes `values` among the targets of `kind`; returns whether anything changed.
fn change_targets(targets: &mut Targets, kind: &str, values: Vec<String>, add: bool) -> bool {
    let set = targets.entry(kind.to_string()).or_default();
    let mut changed = false;
    for value in values {
        changed |= if add {
            set.insert(value)
        } else {
            set.remove(&value)
        };
    }
    if set.is_empty() {
        targets.remove(kind);
    }
    changed
}

fn count(targets: &Targets) -> usize {
    targets.values().map(BTreeSet::len).sum()
}

/// User keys as a plain list, other kinds as `[{contextKind, values}]`, the way LaunchDarkly shows them.
fn split_user_kind(targets: &Targets) -> (Vec<&String>, Value) {
    let users = targets
        .get("user")
        .map(|keys| keys.iter().collect())
        .unwrap_or_default();
    let contexts = targets
        .iter()
        .filter(|(kind, _)| kind.as_str() != "user")
        .map(|(kind, keys)| json!({"contextKind": kind, "values": keys}))
        .collect();
    (users, contexts)
}

pub fn string_list(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard() -> Segment {
        Segment::new("s", "S", false, "user", 1)
    }

    fn add(kind: &str, values: &[&str]) -> Value {
        json!({"kind": "addIncludedTargets", "contextKind": kind, "values": values})
    }

    #[test]
    fn user_keys_are_listed_plainly_and_other_kinds_as_contexts() {
        let (next, actions) = standard()
            .patched(&[add("user", &["u2", "u1"]), add("organization", &["o1"])])
            .unwrap();
        let rep = next.representation("p", "e");
        assert_eq!(rep["included"], json!(["u1", "u2"]));
        assert_eq!(
            rep["includedContexts"],
            json!([{"contextKind": "organization", "values": ["o1"]}])
        );
        assert_eq!(actions, BTreeSet::from(["updateIncluded"]));
        assert!(rep.get("description").is_none());
    }

    #[test]
    fn a_bad_instruction_refuses_the_whole_request() {
        let segment = standard();
        let error = segment
            .patched(&[add("user", &["u1"]), json!({"kind": "frobnicate"})])
            .unwrap_err();
        assert_eq!(error.message, "unknown instruction kind `frobnicate`");
        let keys: Vec<String> = (0..1501).map(|i| i.to_string()).collect();
        let error = segment
            .patched(&[
                json!({"kind": "addIncludedTargets", "contextKind": "user", "values": keys}),
            ])
            .unwrap_err();
        assert!(
            error.message.contains("over the batch limit of 1500"),
            "{}",
            error.message
        );
    }

    #[test]
    fn limits_and_conflicts_are_refused() {
        let (segment, _) = standard()
            .patched(&[
                json!({"kind": "addExcludedTargets", "contextKind": "user", "values": ["u1"]}),
            ])
            .unwrap();
        let error = segment.patched(&[add("user", &["u1"])]).unwrap_err();
        assert!(
            error.message.contains("both included and excluded"),
            "{}",
            error.message
        );
        let mut full = standard();
        full.included
            .insert("user".into(), (0..15_000).map(|i| i.to_string()).collect());
        let error = full.patched(&[add("user", &["one-more"])]).unwrap_err();
        assert!(
            error.message.contains("at most 15000, use a big segment"),
            "{}",
            error.message
        );
    }

    #[test]
    fn big_segments_take_members_not_target_instructions() {
        let big = Segment::new("b", "B", true, "organization", 1);
        assert!(big.patched(&[add("organization", &["o1"])]).is_err());
        let mut next = big.clone();
        let body = json!({"included": {"add": ["o1", "o2"], "remove": ["o9"]}});
        assert!(next.apply_members(&body).unwrap());
        assert!(
            !next.apply_members(&body).unwrap(),
            "the same change again changes nothing"
        );
        assert_eq!(
            next.representation("p", "e")["_unboundedMetadata"]["includedCount"],
            2
        );
        let conflict = json!({"excluded": {"add": ["o1"]}});
        assert!(
            next.apply_members(&conflict)
                .unwrap_err()
                .message
                .contains("both included and excluded")
        );
        assert!(
            standard()
                .apply_members(&json!({"included": {"add": ["u"]}}))
                .is_err()
        );
    }

    #[test]
    fn an_import_merges_into_the_members_or_replaces_them() {
        let mut big = Segment::new("b", "B", true, "organization", 1);
        let keys = |k: &[&str]| k.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert!(big.import_members(keys(&["o2", "o1", "o1"]), false));
        assert!(big.import_members(keys(&["o3", "o2"]), false));
        assert!(!big.import_members(keys(&["o1"]), false), "nothing new");
        let members = |s: &Segment| {
            s.included["organization"]
                .iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(members(&big), ["o1", "o2", "o3"]);
        assert!(big.import_members(keys(&["o9", "o2"]), true));
        assert_eq!(members(&big), ["o2", "o9"]);
        assert!(
            !big.import_members(keys(&["o2", "o9"]), true),
            "the same list"
        );
    }
}
