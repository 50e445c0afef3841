//! Routing: which channels a Kafka record belongs to, and the reverse
//! questions — which topics can feed a given channel, and what record to
//! produce so that it lands on a given channel (`POST /publish`).
//!
//! A route pairs a topic (or topic regex) with a channel *template*: literal
//! text with `{topic}`, `{key}`, `{partition}`, `{header.NAME}` and
//! `{json./pointer}` placeholders. A record may match several routes and so
//! land in several channels. A placeholder with no value for a record (null
//! key, absent header, missing or non-scalar JSON value, empty string) means
//! that route does not apply to the record.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
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
    /// The template as written, for messages.
    source: String,
}

/// Where to produce a record so that this router maps it to a given
/// channel: the answer [`Router::produce_target`] gives `POST /publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceTarget {
    /// The route (index in config order) that maps the record back.
    pub route: usize,
    pub topic: String,
    /// The record key: taken from the channel name when the template has
    /// `{key}`, else the key the request gave, if any.
    pub key: Option<String>,
    /// Headers the record must carry: one per `{header.NAME}` of the
    /// template, its value taken from the channel name.
    pub headers: Vec<(String, String)>,
}

/// Why no record can be produced that lands on a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishRefusal {
    #[error("no route produces channel {channel:?}")]
    NoRoute { channel: String },
    #[error(
        "channel {channel:?} comes only from route[{route}] (channel = {template:?}), which cannot be published to: {reason}"
    )]
    NotInvertible {
        channel: String,
        route: usize,
        template: String,
        reason: &'static str,
    },
    #[error(
        "channel {channel:?} is route[{route}]'s (channel = {template:?}) for the record key {from_channel:?}, but the request's key is {given:?}: leave `key` out or make them agree"
    )]
    KeyMismatch {
        channel: String,
        route: usize,
        template: String,
        from_channel: String,
        given: String,
    },
}

/// A template variable whose value a produced record must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unknown<'t> {
    Key,
    Header(&'t str),
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
            routes.push(Route {
                topics,
                template,
                source: rc.channel.clone(),
            });
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

    /// Why [`Router::route`] maps `record` to no channel, for the log: for
    /// each route reading its topic, what the record lacks for the
    /// route's template (`channel = "user.{key}"`: the record has no key).
    pub fn why_unrouted(&self, record: &Record) -> String {
        let mut json = None;
        let reasons: Vec<String> = self
            .routes
            .iter()
            .filter(|route| route.topics.matches(&record.topic))
            .map(|route| {
                let lacks = route.template.iter().find_map(|part| {
                    let one = std::slice::from_ref(part);
                    if render_part_ok(one, record, &mut json) {
                        return None;
                    }
                    Some(match part {
                        TemplatePart::Key => "no key (or an empty or non-UTF-8 one)".to_owned(),
                        TemplatePart::Header(h) => {
                            format!("no header {h:?} (or an empty or non-UTF-8 one)")
                        }
                        TemplatePart::Json(p) => {
                            format!("no string, number or boolean at {p:?} in a JSON payload")
                        }
                        _ => "an invalid channel name".to_owned(),
                    })
                });
                format!(
                    "channel = {:?}: the record has {}",
                    route.source,
                    lacks.as_deref().unwrap_or(
                        "what it needs, but the name is over 255 bytes or has control characters"
                    )
                )
            })
            .collect();
        if reasons.is_empty() {
            return "no route reads its topic".to_owned();
        }
        format!(
            "no route reading its topic can name a channel for it ({})",
            reasons.join("; ")
        )
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

    /// What to produce so that this router maps the record to `channel`:
    /// the first route in config order that can be *inverted* to it
    /// decides. A route is invertible when it names one `topic` (a
    /// `topic_regex` does not say which topic to write to) and its
    /// template has no `{partition}` (chosen by Kafka's partitioner) and
    /// no `{json./…}` (read from the payload, which is the publisher's
    /// data). The template's `{topic}` is that topic, and at most one kind
    /// of variable takes its value from the channel name: `{key}` becomes
    /// the record key, `{header.NAME}` a header NAME. With several kinds
    /// (`{header.a}.{key}`) the name cannot be split between them
    /// unambiguously, so the route is not invertible. The answer is
    /// checked by rendering the route's template for the record it
    /// describes, so the record lands on exactly `channel`.
    ///
    /// `key` is the request's own key: used when the template does not
    /// take the key from the channel, and otherwise required to agree with
    /// it. Other routes reading the same topic may map the record to more
    /// channels, as for any record produced to it.
    pub fn produce_target(
        &self,
        channel: &str,
        key: Option<&str>,
    ) -> Result<ProduceTarget, PublishRefusal> {
        let mut refused = None;
        for (index, route) in self.routes.iter().enumerate() {
            let inverted = match &route.topics {
                TopicMatch::Exact(topic) => invert(&route.template, channel, topic),
                TopicMatch::Regex(_) => Err("a topic_regex route names no one topic to produce to"),
            };
            match inverted {
                Ok(Some(found)) => {
                    let key = match (found.key, key) {
                        (Some(from_channel), Some(given)) if from_channel != given => {
                            return Err(PublishRefusal::KeyMismatch {
                                channel: channel.to_owned(),
                                route: index,
                                template: route.source.clone(),
                                from_channel,
                                given: given.to_owned(),
                            });
                        }
                        (Some(from_channel), _) => Some(from_channel),
                        (None, given) => given.map(str::to_owned),
                    };
                    return Ok(ProduceTarget {
                        route: index,
                        topic: found.topic,
                        key,
                        headers: found.headers,
                    });
                }
                Ok(None) => {}
                Err(reason) => {
                    if refused.is_none() && self.route_produces(route, channel) {
                        refused = Some(PublishRefusal::NotInvertible {
                            channel: channel.to_owned(),
                            route: index,
                            template: route.source.clone(),
                            reason,
                        });
                    }
                }
            }
        }
        Err(refused.unwrap_or_else(|| PublishRefusal::NoRoute {
            channel: channel.to_owned(),
        }))
    }

    /// Whether `route` can map some record to `channel` (for telling a
    /// channel no route produces from one only a non-invertible route does).
    fn route_produces(&self, route: &Route, channel: &str) -> bool {
        let has_topic = route.template.contains(&TemplatePart::Topic);
        match &route.topics {
            TopicMatch::Exact(t) => {
                template_matches(&route.template, channel, &TopicRule::Exact(t))
            }
            TopicMatch::Regex(re) if has_topic => {
                template_matches(&route.template, channel, &TopicRule::Pattern(re))
            }
            TopicMatch::Regex(_) => template_matches(&route.template, channel, &TopicRule::Any),
        }
    }
}

/// A route's template inverted for one channel name.
struct Inverted {
    topic: String,
    key: Option<String>,
    headers: Vec<(String, String)>,
}

/// The record that `template` over `topic` maps to `channel`: `Ok(None)`
/// when the template cannot produce that name, `Err` (why) when the
/// template cannot be inverted at all.
///
/// With one kind of unknown variable the split is unique: the fixed parts
/// take their own lengths, and the `n` occurrences of the variable share the
/// rest equally. The value is cut at the first occurrence and the whole name
/// rendered again from it, which checks every other part.
fn invert(
    template: &[TemplatePart],
    channel: &str,
    topic: &str,
) -> Result<Option<Inverted>, &'static str> {
    let mut unknown: Option<Unknown<'_>> = None;
    let mut fixed_len = 0;
    let mut occurrences = 0;
    let mut start = None;
    for part in template {
        let this = match part {
            TemplatePart::Literal(s) => {
                fixed_len += s.len();
                continue;
            }
            TemplatePart::Topic => {
                fixed_len += topic.len();
                continue;
            }
            TemplatePart::Partition => {
                return Err("{partition} is chosen by Kafka's partitioner, not by the publisher");
            }
            TemplatePart::Json(_) => {
                return Err("{json./…} is read from the payload, which is the publisher's data");
            }
            TemplatePart::Key => Unknown::Key,
            TemplatePart::Header(name) => Unknown::Header(name),
        };
        match unknown {
            None => {
                unknown = Some(this);
                start = Some(fixed_len);
            }
            Some(u) if u != this => {
                return Err(
                    "its template takes two different variables from the channel name, which cannot be split between them unambiguously",
                );
            }
            Some(_) => {}
        }
        occurrences += 1;
    }
    let mut record = Record {
        topic: Arc::from(topic),
        partition: 0,
        offset: 0,
        timestamp: None,
        key: None,
        headers: Vec::new(),
        payload: None,
    };
    let mut found = Inverted {
        topic: topic.to_owned(),
        key: None,
        headers: Vec::new(),
    };
    if let (Some(unknown), Some(start)) = (unknown, start) {
        let Some(rest) = channel.len().checked_sub(fixed_len) else {
            return Ok(None);
        };
        if rest == 0 || rest % occurrences != 0 {
            return Ok(None);
        }
        let Some(value) = channel.get(start..start + rest / occurrences) else {
            return Ok(None);
        };
        let bytes = Bytes::copy_from_slice(value.as_bytes());
        match unknown {
            Unknown::Key => {
                record.key = Some(bytes);
                found.key = Some(value.to_owned());
            }
            Unknown::Header(name) => {
                record.headers.push((name.to_owned(), Some(bytes)));
                found.headers.push((name.to_owned(), value.to_owned()));
            }
        }
    }
    let rendered = render(template, &record, &mut None);
    Ok((rendered.as_deref() == Some(channel)).then_some(found))
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

/// Whether a variable part of a template has a value in `record`
/// (literals always do).
fn render_part_ok(
    part: &[TemplatePart],
    record: &Record,
    json: &mut Option<Option<serde_json::Value>>,
) -> bool {
    match part {
        [TemplatePart::Literal(_)] => true,
        // A value alone may be an invalid name where the whole is not
        // (e.g. a literal prefix), so render it with a stand-in prefix.
        _ => render(
            &[TemplatePart::Literal("x".into()), part[0].clone()],
            record,
            json,
        )
        .is_some(),
    }
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
///
/// Channel names come from clients, so the search must stay cheap whatever
/// the name: trying every split of the name between the variables would be
/// exponential in their number (`{key}.{key}.{key}.{key}x` against a
/// 255-byte name of dots). Each (template part, position in the name) is
/// tried once and remembered when it fails, so a search costs at most
/// parts × (length + 1) of them, each trying at most length splits. A
/// `{topic}` under a `topic_regex` tests the regex only on splits after
/// which the rest of the name fits: once per split for one `{topic}`, up
/// to length² times for a template with two.
fn template_matches(template: &[TemplatePart], channel: &str, topic: &TopicRule<'_>) -> bool {
    let mut failed = vec![false; template.len() * (channel.len() + 1)];
    matches_from(template, 0, channel, 0, topic, &mut failed)
}

/// Whether `template[part..]` can produce `channel[at..]`; `failed` holds
/// the `(part, at)` already found not to (see [`template_matches`]).
fn matches_from(
    template: &[TemplatePart],
    part: usize,
    channel: &str,
    at: usize,
    topic: &TopicRule<'_>,
    failed: &mut [bool],
) -> bool {
    let Some(seg) = template.get(part) else {
        return at == channel.len();
    };
    let memo = part * (channel.len() + 1) + at;
    if failed[memo] {
        return false;
    }
    let tail = &channel[at..];
    let found = match (seg, topic) {
        (TemplatePart::Literal(lit), _) => {
            tail.starts_with(lit.as_str())
                && matches_from(template, part + 1, channel, at + lit.len(), topic, failed)
        }
        (TemplatePart::Topic, TopicRule::Exact(t)) => {
            tail.starts_with(t)
                && matches_from(template, part + 1, channel, at + t.len(), topic, failed)
        }
        _ if tail.is_empty() => false,
        _ => {
            // Try every split point: the variable takes 1..=len characters.
            // `{partition}` and a `{topic}` under a regex take a run of
            // digits or of topic characters, so the splits stop at the
            // first character they cannot take; the regex, the one costly
            // check, runs only where the rest of the name fits.
            let ends = tail
                .char_indices()
                .map(|(i, _)| i)
                .skip(1)
                .chain(std::iter::once(tail.len()));
            let mut from = 0;
            let mut found = false;
            for end in ends {
                let added = &tail[from..end];
                from = end;
                let can_take = match (seg, topic) {
                    (TemplatePart::Partition, _) => added.bytes().all(|b| b.is_ascii_digit()),
                    (TemplatePart::Topic, TopicRule::Pattern(_)) => {
                        crate::record::is_valid_topic(added)
                    }
                    _ => true,
                };
                if !can_take {
                    break;
                }
                let taken = &tail[..end];
                if matches_from(template, part + 1, channel, at + end, topic, failed)
                    && match (seg, topic) {
                        (TemplatePart::Topic, TopicRule::Pattern(re)) => {
                            crate::record::is_valid_topic(taken) && re.is_match(taken)
                        }
                        _ => true,
                    }
                {
                    found = true;
                    break;
                }
            }
            found
        }
    };
    if !found {
        failed[memo] = true;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

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

    #[test]
    fn an_unrouted_record_is_explained_by_what_each_route_lacks() {
        let r = Router::new(&[
            route("users", "user.{key}"),
            route("users", "org.{json./org}"),
            route("users", "t.{header.region}"),
        ])
        .unwrap();
        let rec = record("users", None, "{}");
        let mut out = Vec::new();
        assert_eq!(r.route(&rec, &mut out), 0);
        assert_eq!(
            r.why_unrouted(&rec),
            "no route reading its topic can name a channel for it (\
             channel = \"user.{key}\": the record has no key (or an empty or non-UTF-8 one); \
             channel = \"org.{json./org}\": the record has no string, number or boolean at \"/org\" in a JSON payload; \
             channel = \"t.{header.region}\": the record has no header \"region\" (or an empty or non-UTF-8 one))"
        );
        assert_eq!(
            r.why_unrouted(&record("other", Some("k"), "{}")),
            "no route reads its topic"
        );
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

    fn target(
        route: usize,
        topic: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
    ) -> ProduceTarget {
        ProduceTarget {
            route,
            topic: topic.into(),
            key: key.map(Into::into),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
        }
    }

    /// Routes a record made from `target` and checks it lands on `channel`.
    fn lands_on(router: &Router, t: &ProduceTarget, channel: &str) {
        let r = Record {
            topic: Arc::from(t.topic.as_str()),
            partition: 1,
            offset: 0,
            timestamp: None,
            key: t.key.as_ref().map(|k| Bytes::copy_from_slice(k.as_bytes())),
            headers: t
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), Some(Bytes::copy_from_slice(v.as_bytes()))))
                .collect(),
            payload: Some(Bytes::from_static(b"{}")),
        };
        assert!(
            channels(router, &r).iter().any(|c| c == channel),
            "{t:?} does not land on {channel:?}"
        );
    }

    #[test]
    fn channels_invert_to_topic_and_key() {
        let router = Router::new(&[
            route("news", "news"),
            route("users", "user.{key}"),
            route("orders", "{topic}.{key}"),
            route("pairs", "pair.{key}.{key}"),
            route("tenants", "tenant.{header.tenant}"),
        ])
        .unwrap();
        let cases = [
            ("news", None, target(0, "news", None, &[])),
            ("news", Some("k1"), target(0, "news", Some("k1"), &[])),
            ("user.k7", None, target(1, "users", Some("k7"), &[])),
            // The key may hold the template's own separators.
            ("user.a.b", None, target(1, "users", Some("a.b"), &[])),
            ("user.k7", Some("k7"), target(1, "users", Some("k7"), &[])),
            ("user.ключ", None, target(1, "users", Some("ключ"), &[])),
            ("orders.o-1", None, target(2, "orders", Some("o-1"), &[])),
            ("pair.x.y.x.y", None, target(3, "pairs", Some("x.y"), &[])),
            (
                "tenant.acme",
                Some("k"),
                target(4, "tenants", Some("k"), &[("tenant", "acme")]),
            ),
        ];
        for (channel, key, want) in cases {
            let got = router.produce_target(channel, key).unwrap();
            assert_eq!(got, want, "{channel}");
            lands_on(&router, &got, channel);
        }
        // Both halves of a repeated variable must agree; an empty value
        // never renders.
        for channel in ["pair.x.y", "pair.a.b.c", "user.", "orders.", "newsx"] {
            assert_eq!(
                router.produce_target(channel, None),
                Err(PublishRefusal::NoRoute {
                    channel: channel.into()
                }),
                "{channel}"
            );
        }
    }

    #[test]
    fn a_key_from_the_channel_must_agree_with_the_requests() {
        let router = Router::new(&[route("users", "user.{key}")]).unwrap();
        let err = router.produce_target("user.k7", Some("k8")).unwrap_err();
        assert!(matches!(err, PublishRefusal::KeyMismatch { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("\"k7\"") && message.contains("\"k8\""),
            "{message}"
        );
    }

    #[test]
    fn the_first_invertible_route_in_config_order_wins() {
        let router = Router::new(&[
            regex_route("^events\\.", "{topic}"),
            route("audit", "events.{key}"),
            route("events.clicks", "events.clicks"),
        ])
        .unwrap();
        // route[0] produces the name but cannot be inverted; route[1] can.
        assert_eq!(
            router.produce_target("events.clicks", None),
            Ok(target(1, "audit", Some("clicks"), &[]))
        );
    }

    #[test]
    fn routes_that_cannot_be_inverted_are_named() {
        let router = Router::new(&[
            regex_route("^events\\.", "{topic}"),
            route("orders", "p{partition}"),
            route("orders", "u.{json./user}"),
            route("orders", "t.{header.tenant}.{key}"),
            route("news", "news"),
        ])
        .unwrap();
        for (channel, index, reason) in [
            ("events.clicks", 0, "topic_regex"),
            ("p3", 1, "{partition}"),
            ("u.42", 2, "{json./…}"),
            ("t.acme.k7", 3, "two different variables"),
        ] {
            match router.produce_target(channel, None) {
                Err(PublishRefusal::NotInvertible {
                    route, reason: why, ..
                }) => {
                    assert_eq!(route, index, "{channel}");
                    assert!(why.contains(reason), "{channel}: {why}");
                }
                other => panic!("{channel}: {other:?}"),
            }
        }
        // A name that does not even fit a non-invertible route is no
        // route's; `p{partition}` takes only digits.
        assert!(matches!(
            router.produce_target("px", None),
            Err(PublishRefusal::NoRoute { .. })
        ));
        assert_eq!(
            router.produce_target("news", None),
            Ok(target(4, "news", None, &[]))
        );
    }

    /// The search as `template_matches` did it before it remembered
    /// failures, every split tried again wherever it is reached: the
    /// reference the memoised search must agree with, on names short
    /// enough for it.
    fn matches_by_trying_every_split(
        template: &[TemplatePart],
        channel: &str,
        topic: &TopicRule<'_>,
    ) -> bool {
        let Some((seg, rest)) = template.split_first() else {
            return channel.is_empty();
        };
        match (seg, topic) {
            (TemplatePart::Literal(lit), _) => channel
                .strip_prefix(lit.as_str())
                .is_some_and(|tail| matches_by_trying_every_split(rest, tail, topic)),
            (TemplatePart::Topic, TopicRule::Exact(t)) => channel
                .strip_prefix(t)
                .is_some_and(|tail| matches_by_trying_every_split(rest, tail, topic)),
            _ => (1..=channel.len())
                .filter(|end| channel.is_char_boundary(*end))
                .any(|end| {
                    let taken = &channel[..end];
                    let fits = match (seg, topic) {
                        (TemplatePart::Partition, _) => taken.bytes().all(|b| b.is_ascii_digit()),
                        (TemplatePart::Topic, TopicRule::Pattern(re)) => {
                            crate::record::is_valid_topic(taken) && re.is_match(taken)
                        }
                        _ => true,
                    };
                    fits && matches_by_trying_every_split(rest, &channel[end..], topic)
                }),
        }
    }

    /// Runs `f` on a thread of its own: whether it finished within
    /// `limit`. One that does not is left behind, so that the test fails
    /// instead of hanging.
    fn finishes_within(limit: Duration, f: impl FnOnce() + Send + 'static) -> bool {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        finished.recv_timeout(limit).is_ok()
    }

    #[test]
    fn a_name_that_nearly_fits_many_variables_is_refused_quickly() {
        // Every {key} takes any run of dots and the `x` never comes: trying
        // each way to split 255 dots between five variables is some 10^8
        // attempts, minutes of a client's request.
        let router = Router::new(&[route("t", "{key}.{key}.{key}.{key}.{key}x")]).unwrap();
        let channel = ".".repeat(MAX_CHANNEL_LEN);
        let search = move || {
            assert_eq!(
                router.topics_for_channel(&channel, std::iter::empty()),
                None
            );
            assert!(router.produce_target(&channel, None).is_err());
        };
        assert!(finishes_within(Duration::from_secs(2), search));
    }

    /// A channel name a client may send: up to the 255 bytes Herald
    /// accepts, over few characters, so that it often nearly fits.
    fn client_channel(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just('.'), Just('a'), Just('7'), Just('x')],
            0..=max,
        )
        .prop_map(|c| c.into_iter().collect())
    }

    /// A channel template as written in config, from every kind of part.
    fn template_text() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            3 => "[.ax]{1,2}",
            2 => Just("{key}".to_owned()),
            1 => Just("{topic}".to_owned()),
            1 => Just("{partition}".to_owned()),
            1 => Just("{header.tenant}".to_owned()),
            1 => Just("{json./id}".to_owned()),
        ];
        proptest::collection::vec(part, 1..6).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any text is a template or a config error naming
        /// `route[i].channel`; never a panic.
        #[test]
        fn any_template_text_compiles_or_is_refused_by_name(text in "\\PC{0,40}|[{}a.]{0,12}") {
            match Router::new(&[route("t", "c"), route("t", &text)]) {
                Ok(_) => prop_assert!(parse_template(&text).is_ok()),
                Err(e) => {
                    let message = e.to_string();
                    prop_assert!(message.starts_with("route[1].channel = "), "{}", message);
                }
            }
        }

        /// The memoised search finds what trying every split finds.
        #[test]
        fn matching_agrees_with_trying_every_split(
            template in template_text(),
            channel in client_channel(12),
            exact in prop_oneof![Just("t"), Just("a.x")],
        ) {
            let parts = parse_template(&template).unwrap();
            let re = Regex::new("^[at]").unwrap();
            for rule in [TopicRule::Any, TopicRule::Exact(exact), TopicRule::Pattern(&re)] {
                prop_assert_eq!(
                    template_matches(&parts, &channel, &rule),
                    matches_by_trying_every_split(&parts, &channel, &rule),
                    "{} against {:?}", template, channel
                );
            }
        }

        /// Every channel a record is routed to is a valid name, is accepted
        /// for subscription with the record's topic among its feeds, and,
        /// when it can be published to, the record the router says to
        /// produce lands on it.
        #[test]
        fn routed_channels_map_back_to_their_topic(
            templates in proptest::collection::vec(template_text(), 1..4),
            topic in prop_oneof![Just("t"), Just("a.x")],
            key in proptest::option::of("[.a7]{0,3}"),
            tenant in proptest::option::of("[.ax]{0,3}"),
            id in prop_oneof![Just("7".to_owned()), Just("\"a.\"".to_owned()), Just("{}".to_owned()), Just("null".to_owned())],
            partition in 0i32..20,
        ) {
            let specs: Vec<RouteSpec> = templates
                .iter()
                .flat_map(|t| [route("t", t), regex_route("^a", t)])
                .collect();
            let router = Router::new(&specs).unwrap();
            let record = Record {
                topic: Arc::from(topic),
                partition,
                offset: 0,
                timestamp: None,
                key: key.map(|k| Bytes::from(k.into_bytes())),
                headers: tenant.into_iter().map(|v| ("tenant".to_owned(), Some(Bytes::from(v.into_bytes())))).collect(),
                payload: Some(Bytes::from(format!("{{\"id\":{id}}}").into_bytes())),
            };
            for channel in channels(&router, &record) {
                prop_assert!(is_valid_channel(&channel), "{:?}", channel);
                let feeds = router.topics_for_channel(&channel, ["t", "a.x"].into_iter());
                prop_assert!(
                    feeds.as_ref().is_some_and(|f| f.contains(topic)),
                    "{:?} from {} is fed by {:?}", channel, topic, feeds
                );
                if let Ok(target) = router.produce_target(&channel, None) {
                    lands_on(&router, &target, &channel);
                }
            }
        }
    }

    proptest! {
        // Each case is a search that fails: fewer of them.
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// No client-chosen name makes the search long: up to 255 bytes
        /// against templates of up to five variables, each name a near
        /// miss (the template ends in a `y` no name has), the case that
        /// costs a search the most.
        #[test]
        fn matching_a_long_name_is_quick(
            template in template_text().prop_map(|t| format!("{t}y")),
            channel in client_channel(MAX_CHANNEL_LEN),
        ) {
            let router = Router::new(&[route("t", &template), regex_route("^[at]", &template)]).unwrap();
            let search = move || {
                let _ = router.topics_for_channel(&channel, ["t", "a.x"].into_iter());
                let _ = router.produce_target(&channel, None);
            };
            prop_assert!(finishes_within(Duration::from_secs(2), search), "{}", template);
        }
    }
}
