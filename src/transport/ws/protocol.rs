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
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| bad(format!("message is not valid JSON: {e}"), None))?;
        let serde_json::Value::Object(fields) = value else {
            return Err(bad(
                "a message must be a JSON object with a \"type\"".into(),
                None,
            ));
        };
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
}
