//! The client's messages (`subscribe`, `unsubscribe`), parsed strictly:
//! anything else is refused with an `error` message that says what was
//! wrong, and the connection stays open.

/// A message from the client.
#[derive(Debug, PartialEq)]
pub(super) enum ClientMessage {
    Subscribe {
        channel: String,
        cursor: Option<String>,
        since: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    /// A token for the connection: its first, or a fresh one before the
    /// last expires.
    Auth {
        token: String,
    },
}

/// Why a client message was refused: the `error` message's fields.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) channel: Option<String>,
}

impl ClientMessage {
    pub(super) fn parse(text: &str) -> Result<ClientMessage, Refusal> {
        let bad = |message: String, channel: Option<&str>| Refusal {
            code: "bad_message",
            message,
            channel: channel.map(str::to_owned),
        };
        let Fields(fields) = serde_json::from_str(text).map_err(|e| match e.classify() {
            // Valid JSON of the wrong shape: not an object, or a field twice.
            serde_json::error::Category::Data => bad(format!("{e}"), None),
            _ => bad(format!("message is not valid JSON: {e}"), None),
        })?;
        let kind = match fields.get("type") {
            Some(serde_json::Value::String(kind)) => kind.as_str(),
            Some(other) => {
                return Err(bad(format!("\"type\" must be a string, not {other}"), None));
            }
            None => return Err(bad("the message has no \"type\"".into(), None)),
        };
        let allowed: &[&str] = match kind {
            "subscribe" => &["type", "channel", "cursor", "since"],
            "unsubscribe" => &["type", "channel"],
            "auth" => &["type", "token"],
            other => {
                return Err(bad(
                    format!(
                        "unknown message type {other:?} (expected \"subscribe\", \"unsubscribe\" or \"auth\")"
                    ),
                    None,
                ));
            }
        };
        if kind == "auth" {
            let token = match fields.get("token") {
                Some(serde_json::Value::String(t)) => t.clone(),
                Some(_) => return Err(bad("\"token\" must be a string".into(), None)),
                None => return Err(bad("auth needs a \"token\"".into(), None)),
            };
            if let Some(field) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(bad(
                    format!("unknown field {field:?} in auth (expected token)"),
                    None,
                ));
            }
            return Ok(ClientMessage::Auth { token });
        }
        let channel = match fields.get("channel") {
            Some(serde_json::Value::String(c)) => c.clone(),
            Some(other) => {
                return Err(bad(
                    format!("\"channel\" must be a string, not {other}"),
                    None,
                ));
            }
            None => return Err(bad(format!("{kind} needs a \"channel\""), None)),
        };
        if let Some(field) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(
                format!(
                    "unknown field {field:?} in {kind} (expected {})",
                    allowed[1..].join(", ")
                ),
                Some(&channel),
            ));
        }
        if kind == "unsubscribe" {
            return Ok(ClientMessage::Unsubscribe { channel });
        }
        let cursor = match fields.get("cursor") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(c)) => Some(c.clone()),
            Some(other) => {
                return Err(Refusal {
                    code: "invalid_cursor",
                    message: format!("\"cursor\" must be a string, not {other}"),
                    channel: Some(channel),
                });
            }
        };
        let since = match fields.get("since") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(Refusal {
                    code: "invalid_since",
                    message: format!(
                        "\"since\" must be milliseconds since the epoch or an RFC 3339 string, not {other}"
                    ),
                    channel: Some(channel),
                });
            }
        };
        Ok(ClientMessage::Subscribe {
            channel,
            cursor,
            since,
        })
    }
}

/// A message's fields, each name at most once. A field given twice is
/// refused rather than one of its values taken silently: which one a
/// client, a proxy or Herald would take is anybody's guess (`POST /publish`
/// refuses such a body too).
struct Fields(serde_json::Map<String, serde_json::Value>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Fields;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a message: a JSON object with a \"type\"")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields, A::Error> {
                let mut fields = serde_json::Map::new();
                while let Some(name) = map.next_key::<String>()? {
                    if fields.contains_key(&name) {
                        return Err(serde::de::Error::custom(format_args!(
                            "the message has field {name:?} twice"
                        )));
                    }
                    let value = map.next_value()?;
                    fields.insert(name, value);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// `{"type":"error","code","message"[,"channel"]}`.
pub(super) fn error_json(code: &str, message: &str, channel: Option<&str>) -> String {
    let mut frame = serde_json::json!({"type": "error", "code": code, "message": message});
    if let Some(channel) = channel {
        frame["channel"] = channel.into();
    }
    frame.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn refused(text: &str) -> Refusal {
        ClientMessage::parse(text).unwrap_err()
    }

    #[test]
    fn client_messages_parse() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe","channel":"news"}"#).unwrap(),
            ClientMessage::Subscribe {
                channel: "news".into(),
                cursor: None,
                since: None
            }
        );
        assert_eq!(
            ClientMessage::parse(
                r#"{"type":"subscribe","channel":"a","cursor":"hAA","since":null}"#
            )
            .unwrap(),
            ClientMessage::Subscribe {
                channel: "a".into(),
                cursor: Some("hAA".into()),
                since: None
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe","channel":"a","since":1700000000000}"#)
                .unwrap(),
            ClientMessage::Subscribe {
                channel: "a".into(),
                cursor: None,
                since: Some("1700000000000".into())
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"channel":"a","type":"unsubscribe"}"#).unwrap(),
            ClientMessage::Unsubscribe {
                channel: "a".into()
            }
        );
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        for (text, needle) in [
            ("{nope", "not valid JSON"),
            ("[1]", "JSON object"),
            ("\"subscribe\"", "JSON object"),
            (
                r#"{"type":"subscribe","channel":"a","channel":"b"}"#,
                "field \"channel\" twice",
            ),
            (
                r#"{"type":"auth","type":"subscribe","channel":"a"}"#,
                "field \"type\" twice",
            ),
            (r#"{"channel":"a"}"#, "no \"type\""),
            (r#"{"type":7}"#, "must be a string"),
            (r#"{"type":"hello"}"#, "unknown message type \"hello\""),
            (r#"{"type":"subscribe"}"#, "subscribe needs a \"channel\""),
            (
                r#"{"type":"unsubscribe","channel":5}"#,
                "\"channel\" must be",
            ),
            (
                r#"{"type":"subscribe","channel":"a","curser":"x"}"#,
                "unknown field \"curser\"",
            ),
        ] {
            let r = refused(text);
            assert_eq!(r.code, "bad_message", "{text}");
            assert!(r.message.contains(needle), "{text}: {}", r.message);
        }
        let r = refused(r#"{"type":"subscribe","channel":"a","cursor":5}"#);
        assert_eq!(
            (r.code, r.channel.as_deref()),
            ("invalid_cursor", Some("a"))
        );
    }

    /// Nesting deeper than serde_json's recursion limit (128) is refused,
    /// not a stack overflow, however deep it goes.
    #[test]
    fn deep_nesting_is_refused() {
        for text in [
            "[".repeat(100_000),
            format!("{}1{}", "[".repeat(200), "]".repeat(200)),
            format!(
                r#"{{"type":"subscribe","channel":"a","cursor":{}"#,
                "{\"a\":".repeat(10_000)
            ),
        ] {
            assert_eq!(refused(&text).code, "bad_message");
        }
    }

    /// A field of a generated message: present with probability `p`, as
    /// one of `values` (JSON text).
    fn field(p: f64, values: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
        proptest::option::weighted(p, proptest::sample::select(values).prop_map(str::to_owned))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any text is a message or a refusal with a documented code
        /// (`bad_message`, or `invalid_cursor`/`invalid_since` for a
        /// subscription's position); never a panic.
        #[test]
        fn any_text_is_a_message_or_a_documented_refusal(
            text in "\\PC{0,100}|[{}\\[\\]\":,a-z0-9 ]{0,60}"
        ) {
            if let Err(r) = ClientMessage::parse(&text) {
                prop_assert!(
                    ["bad_message", "invalid_cursor", "invalid_since"].contains(&r.code),
                    "{}: {}", text, r.code
                );
                prop_assert!(!r.message.is_empty());
            }
        }

        /// Objects made of the fields the protocol knows, each of any
        /// JSON type, and one it does not: accepted exactly as
        /// docs/protocol.md says, refused with the code it names.
        #[test]
        fn messages_are_taken_or_refused_as_documented(
            kind in field(0.95, &[r#""subscribe""#, r#""unsubscribe""#, r#""auth""#, r#""ping""#, "7"]),
            channel in field(0.9, &[r#""news""#, "5", "null"]),
            cursor in field(0.5, &[r#""hAA""#, "5", "null", "[]"]),
            since in field(0.5, &[r#""1700000000000""#, "1700000000000", "null", "true"]),
            token in field(0.5, &[r#""t.k.n""#, "null"]),
            extra in field(0.1, &["1"]),
            twice in proptest::option::weighted(0.3, 0usize..6),
        ) {
            let named = [
                ("type", &kind), ("channel", &channel), ("cursor", &cursor),
                ("since", &since), ("token", &token), ("extra", &extra),
            ];
            let mut pairs: Vec<String> = named
                .iter()
                .filter_map(|(n, v)| v.as_ref().map(|v| format!("{n:?}:{v}")))
                .collect();
            // A field given twice, the second time as another string.
            let repeated = twice.filter(|i| named[*i].1.is_some());
            if let Some(i) = repeated {
                pairs.push(format!("{:?}:\"other\"", named[i].0));
            }
            let text = format!("{{{}}}", pairs.join(","));
            let given = |n: &str| named.iter().any(|(m, v)| *m == n && v.is_some());
            let is = |v: &Option<String>, want: &str| v.as_deref() == Some(want);
            let string = |v: &Option<String>| v.as_ref().is_some_and(|v| v.starts_with('"'));
            let unknown = |allowed: &[&str]| {
                named.iter().any(|(n, v)| v.is_some() && !allowed.contains(n))
            };
            // What docs/protocol.md says of this message.
            let expected: Result<(), &str> = match kind.as_deref() {
                _ if repeated.is_some() => Err("bad_message"),
                Some(r#""auth""#) if string(&token) && !unknown(&["type", "token"]) => Ok(()),
                Some(r#""auth""#) => Err("bad_message"),
                Some(r#""subscribe""#) | Some(r#""unsubscribe""#) if !string(&channel) => Err("bad_message"),
                Some(r#""unsubscribe""#) if unknown(&["type", "channel"]) => Err("bad_message"),
                Some(r#""unsubscribe""#) => Ok(()),
                Some(r#""subscribe""#) if unknown(&["type", "channel", "cursor", "since"]) => Err("bad_message"),
                Some(r#""subscribe""#) if given("cursor") && !string(&cursor) && !is(&cursor, "null") => Err("invalid_cursor"),
                Some(r#""subscribe""#) if given("since") && is(&since, "true") => Err("invalid_since"),
                Some(r#""subscribe""#) => Ok(()),
                _ => Err("bad_message"),
            };
            let got = ClientMessage::parse(&text);
            prop_assert_eq!(got.as_ref().map(|_| ()).map_err(|r| r.code), expected, "{} -> {:?}", text, got);
            if let Ok(ClientMessage::Subscribe { cursor: c, since: s, .. }) = &got {
                prop_assert_eq!(c.is_some(), string(&cursor));
                prop_assert_eq!(s.as_deref(), since.as_deref().filter(|v| *v != "null").map(|v| v.trim_matches('"')));
            }
        }
    }
}
