//! Routing: which channels a Kafka record belongs to, and the reverse
//! question — which topics can feed a given channel.
//!
//! A route pairs a topic (or topic regex) with a channel *template*: literal
//! text with `{topic}`, `{key}`, `{partition}`, `{header.NAME}` and
//! `{json./pointer}` placeholders. A record may match several routes and so
//! land in several channels. A placeholder with no value for a record (null
//! key, absent header, missing or non-scalar JSON value, empty string) means
//! that route does not apply to the record.

use std::collections::BTreeSet;

use regex::Regex;
use serde::Deserialize;

use crate::record::Record;

/// Longest channel name, in bytes. Longer names from record data are not
/// routed (and counted as unrouted when no other route applies).
pub const MAX_CHANNEL_LEN: usize = 255;

/// One routing rule as written in config (`[[route]]`): the router's own
/// type, so that the router needs nothing from `config`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// A topic name …
    pub topic: Option<String>,
    /// … or a regular expression over topic names (exactly one of the two).
    pub topic_regex: Option<String>,
    /// Channel template: literal text with `{topic}`, `{key}`, `{partition}`,
    /// `{header.NAME}` or `{json./pointer}`.
    pub channel: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("route[{index}].{key} = {value:?}: {reason}")]
    Route {
        index: usize,
        key: &'static str,
        value: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Literal(String),
    Topic,
    Key,
    Partition,
    Header(String),
    Json(String),
}

#[derive(Debug)]
enum TopicMatch {
    Exact(String),
    Regex(Regex),
}

impl TopicMatch {
    fn matches(&self, topic: &str) -> bool {
        match self {
            TopicMatch::Exact(t) => t == topic,
            TopicMatch::Regex(r) => r.is_match(topic),
        }
    }
}

#[derive(Debug)]
struct Route {
    topics: TopicMatch,
    template: Vec<TemplatePart>,
}

/// The compiled routing table.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    needs_headers: bool,
}

impl Router {
    pub fn new(configs: &[RouteSpec]) -> Result<Router, RouterError> {
        let mut routes = Vec::with_capacity(configs.len());
        for (index, rc) in configs.iter().enumerate() {
            let err = |key: &'static str, value: &str, reason: String| RouterError::Route {
                index,
                key,
                value: value.to_owned(),
                reason,
            };
            let topics = match (&rc.topic, &rc.topic_regex) {
                (Some(t), None) => {
                    if !crate::record::is_valid_topic(t) {
                        return Err(err("topic", t, "not a valid Kafka topic name".into()));
                    }
                    TopicMatch::Exact(t.clone())
                }
                (None, Some(r)) => TopicMatch::Regex(
                    Regex::new(r).map_err(|e| err("topic_regex", r, e.to_string()))?,
                ),
                (Some(t), Some(_)) => {
                    return Err(err(
                        "topic",
                        t,
                        "set either `topic` or `topic_regex`, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(err("topic", "", "set `topic` or `topic_regex`".into()));
                }
            };
            let template = parse_template(&rc.channel)
                .map_err(|reason| err("channel", &rc.channel, reason))?;
            routes.push(Route { topics, template });
        }
        let needs_headers = routes.iter().any(|r| {
            r.template
                .iter()
                .any(|s| matches!(s, TemplatePart::Header(_)))
        });
        Ok(Router {
            routes,
            needs_headers,
        })
    }

    /// Whether any route reads record headers (so ingest must copy them).
    pub fn needs_headers(&self) -> bool {
        self.needs_headers
    }

    /// Whether some route consumes this topic.
    pub fn consumes(&self, topic: &str) -> bool {
        self.routes.iter().any(|r| r.topics.matches(topic))
    }

    /// Topics named literally by routes (consumed even before they exist).
    pub fn fixed_topics(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().filter_map(|r| match &r.topics {
            TopicMatch::Exact(t) => Some(t.as_str()),
            TopicMatch::Regex(_) => None,
        })
    }

    /// Channels a record belongs to, deduplicated, in route order. Appends to
    /// `out`; returns how many were added.
    pub fn route(&self, record: &Record, out: &mut Vec<String>) -> usize {
        let before = out.len();
        let mut json: Option<Option<serde_json::Value>> = None;
        for route in &self.routes {
            if !route.topics.matches(&record.topic) {
                continue;
            }
            if let Some(name) = render(&route.template, record, &mut json)
                && !out[before..].contains(&name)
            {
                out.push(name);
            }
        }
        out.len() - before
    }

    /// The topics that can feed `channel`, among the fixed topics and the
    /// `known` ones. `None` when no route can produce this channel name.
    /// A `topic_regex` route with `{topic}` accepts a channel for a topic
    /// that does not exist yet (the set is then empty until it appears).
    pub fn topics_for_channel<'a>(
        &self,
        channel: &str,
        known: impl Iterator<Item = &'a str> + Clone,
    ) -> Option<BTreeSet<String>> {
        let mut found = false;
        let mut topics = BTreeSet::new();
        for route in &self.routes {
            let has_topic = route.template.contains(&TemplatePart::Topic);
            let mut candidates: Vec<&str> =
                known.clone().filter(|t| route.topics.matches(t)).collect();
            if let TopicMatch::Exact(t) = &route.topics
                && !candidates.contains(&t.as_str())
            {
                candidates.push(t);
            }
            if has_topic {
                for t in candidates {
                    if template_matches(&route.template, channel, &TopicRule::Exact(t)) {
                        found = true;
                        topics.insert(t.to_owned());
                    }
                }
                if let TopicMatch::Regex(re) = &route.topics {
                    found |= template_matches(&route.template, channel, &TopicRule::Pattern(re));
                }
            } else if template_matches(&route.template, channel, &TopicRule::Any) {
                found = true;
                topics.extend(candidates.into_iter().map(str::to_owned));
            }
        }
        found.then_some(topics)
    }
}

/// What `{topic}` may stand for when matching a channel name.
enum TopicRule<'a> {
    /// Exactly this topic.
    Exact(&'a str),
    /// Any valid topic name this regex accepts.
    Pattern(&'a Regex),
    /// The template has no `{topic}`.
    Any,
}

/// Whether a channel name is acceptable at all.
pub fn is_valid_channel(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_CHANNEL_LEN && !name.chars().any(char::is_control)
}

fn parse_template(text: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                parts.push(TemplatePart::Literal(rest.to_owned()));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b'}' => {
                return Err(format!(
                    "unmatched `}}` at byte {}",
                    text.len() - rest.len() + i
                ));
            }
            Some(i) => {
                if i > 0 {
                    parts.push(TemplatePart::Literal(rest[..i].to_owned()));
                }
                let close = rest[i..]
                    .find('}')
                    .ok_or_else(|| "unclosed `{`".to_owned())?;
                let var = &rest[i + 1..i + close];
                parts.push(match var {
                    "topic" => TemplatePart::Topic,
                    "key" => TemplatePart::Key,
                    "partition" => TemplatePart::Partition,
                    _ if var.starts_with("header.") && var.len() > 7 => TemplatePart::Header(var[7..].to_owned()),
                    _ if var.starts_with("json.") => {
                        let pointer = &var[5..];
                        if !pointer.starts_with('/') {
                            return Err(format!("`{{{var}}}`: a JSON pointer starts with `/`"));
                        }
                        TemplatePart::Json(pointer.to_owned())
                    }
                    _ => {
                        return Err(format!(
                            "unknown template variable `{{{var}}}` (known: {{topic}} {{key}} {{partition}} {{header.NAME}} {{json./pointer}})"
                        ));
                    }
                });
                rest = &rest[i + close + 1..];
            }
        }
    }
    if parts.is_empty() {
        return Err("the channel template is empty".into());
    }
    Ok(parts)
}

fn render(
    template: &[TemplatePart],
    record: &Record,
    json: &mut Option<Option<serde_json::Value>>,
) -> Option<String> {
    let mut name = String::new();
    for seg in template {
        match seg {
            TemplatePart::Literal(s) => name.push_str(s),
            TemplatePart::Topic => name.push_str(&record.topic),
            TemplatePart::Partition => name.push_str(&record.partition.to_string()),
            TemplatePart::Key => push_value(&mut name, record.key.as_deref()?)?,
            TemplatePart::Header(h) => push_value(&mut name, record.header(h)?)?,
            TemplatePart::Json(pointer) => {
                let doc = json.get_or_insert_with(|| {
                    record
                        .payload
                        .as_deref()
                        .and_then(|p| serde_json::from_slice(p).ok())
                });
                match doc.as_ref()?.pointer(pointer)? {
                    serde_json::Value::String(s) if !s.is_empty() => name.push_str(s),
                    serde_json::Value::Number(n) => name.push_str(&n.to_string()),
                    serde_json::Value::Bool(b) => name.push_str(if *b { "true" } else { "false" }),
                    _ => return None,
                }
            }
        }
    }
    is_valid_channel(&name).then_some(name)
}

fn push_value(name: &mut String, value: &[u8]) -> Option<()> {
    let s = std::str::from_utf8(value).ok()?;
    if s.is_empty() {
        return None;
    }
    name.push_str(s);
    Some(())
}

/// Whether `channel` can be produced by `template`. Variables match one or
/// more characters (`{partition}` only digits, `{topic}` per `topic`).
/// Backtracking over a handful of template parts on names of at most 255 bytes.
fn template_matches(template: &[TemplatePart], channel: &str, topic: &TopicRule<'_>) -> bool {
    let Some((seg, rest)) = template.split_first() else {
        return channel.is_empty();
    };
    match (seg, topic) {
        (TemplatePart::Literal(lit), _) => channel
            .strip_prefix(lit.as_str())
            .is_some_and(|tail| template_matches(rest, tail, topic)),
        (TemplatePart::Topic, TopicRule::Exact(t)) => channel
            .strip_prefix(t)
            .is_some_and(|tail| template_matches(rest, tail, topic)),
        _ if channel.is_empty() => false,
        _ => {
            // Try every split point: the variable takes 1..=len characters.
            let ends = channel
                .char_indices()
                .map(|(i, _)| i)
                .skip(1)
                .chain(std::iter::once(channel.len()));
            for end in ends {
                let taken = &channel[..end];
                let fits = match (seg, topic) {
                    (TemplatePart::Partition, _) => taken.bytes().all(|b| b.is_ascii_digit()),
                    (TemplatePart::Topic, TopicRule::Pattern(re)) => {
                        crate::record::is_valid_topic(taken) && re.is_match(taken)
                    }
                    _ => true,
                };
                if !fits && matches!(seg, TemplatePart::Partition) {
                    break;
                }
                if fits && template_matches(rest, &channel[end..], topic) {
                    return true;
                }
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    fn route(topic: &str, channel: &str) -> RouteSpec {
        RouteSpec {
            topic: Some(topic.into()),
            topic_regex: None,
            channel: channel.into(),
        }
    }

    fn regex_route(re: &str, channel: &str) -> RouteSpec {
        RouteSpec {
            topic: None,
            topic_regex: Some(re.into()),
            channel: channel.into(),
        }
    }

    fn record(topic: &str, key: Option<&str>, payload: &str) -> Record {
        Record {
            topic: Arc::from(topic),
            partition: 2,
            offset: 10,
            timestamp: Some(1),
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            headers: vec![("tenant".into(), Some(Bytes::from_static(b"acme")))],
            payload: Some(Bytes::copy_from_slice(payload.as_bytes())),
        }
    }

    fn channels(router: &Router, r: &Record) -> Vec<String> {
        let mut out = Vec::new();
        router.route(r, &mut out);
        out
    }

    #[test]
    fn every_template_variable_renders() {
        let router = Router::new(&[
            route("orders", "all"),
            route("orders", "user.{key}"),
            route("orders", "{topic}.p{partition}"),
            route("orders", "tenant.{header.tenant}"),
            route("orders", "u/{json./user/id}/{json./kind}"),
        ])
        .unwrap();
        let r = record("orders", Some("k7"), r#"{"user":{"id":42},"kind":"paid"}"#);
        assert_eq!(
            channels(&router, &r),
            ["all", "user.k7", "orders.p2", "tenant.acme", "u/42/paid"]
        );
        assert!(router.needs_headers());
    }

    #[test]
    fn missing_values_skip_the_route() {
        let router = Router::new(&[
            route("t", "user.{key}"),
            route("t", "x.{json./id}"),
            route("t", "h.{header.nope}"),
        ])
        .unwrap();
        assert!(channels(&router, &record("t", None, "not json")).is_empty());
        assert!(channels(&router, &record("t", Some(""), r#"{"id":{}}"#)).is_empty());
        assert!(channels(&router, &record("other", Some("k"), "{}")).is_empty());
    }

    #[test]
    fn duplicate_channels_are_merged() {
        let router = Router::new(&[route("t", "c"), regex_route("^t$", "c")]).unwrap();
        assert_eq!(channels(&router, &record("t", None, "")), ["c"]);
    }

    #[test]
    fn templates_are_validated() {
        for bad in ["", "a{", "a}", "{nope}", "{json.id}", "{header.}"] {
            assert!(Router::new(&[route("t", bad)]).is_err(), "{bad:?} accepted");
        }
        assert!(Router::new(&[regex_route("(", "c")]).is_err());
        assert!(Router::new(&[route("bad topic", "c")]).is_err());
    }

    #[test]
    fn channels_map_back_to_their_topics() {
        let router = Router::new(&[
            route("news", "news"),
            route("users", "user.{key}"),
            regex_route("^events\\.", "{topic}"),
            regex_route("^shard-", "p{partition}.{topic}"),
        ])
        .unwrap();
        let known = ["news", "users", "events.a", "events.b", "shard-1", "other"];
        let topics = |c: &str| {
            router
                .topics_for_channel(c, known.iter().copied())
                .map(|s| s.into_iter().collect::<Vec<_>>())
        };
        assert_eq!(topics("news"), Some(vec!["news".into()]));
        assert_eq!(topics("user.k7"), Some(vec!["users".into()]));
        assert_eq!(topics("user."), None);
        assert_eq!(topics("events.a"), Some(vec!["events.a".into()]));
        // A topic the regex admits but that does not exist yet: accepted,
        // fed by nothing until it appears.
        assert_eq!(topics("events.zzz"), Some(vec![]));
        assert_eq!(topics("other"), None);
        assert_eq!(topics("p3.shard-1"), Some(vec!["shard-1".into()]));
        assert_eq!(topics("px.shard-1"), None);
        assert_eq!(topics("nothing"), None);
    }

    #[test]
    fn fixed_topics_feed_channels_before_they_exist() {
        let router = Router::new(&[route("later", "later")]).unwrap();
        let known: [&str; 0] = [];
        assert_eq!(
            router.topics_for_channel("later", known.iter().copied()),
            Some(["later".to_owned()].into())
        );
    }
}
