//! `permessage-deflate` (RFC 7692) in the opening handshake: which of the
//! client's offers in `Sec-WebSocket-Extensions` Herald takes, and its
//! answer.
//!
//! Herald compresses each publication once for every connection, so it
//! keeps no compression context between messages and uses the full
//! 32 KiB window: it answers `server_no_context_takeover` always, and
//! declines an offer that asks for a smaller server window
//! (`server_max_window_bits` below 15), since the same bytes go to every
//! client. It inflates each client message with a fresh inflater
//! (`client_no_context_takeover`, which RFC 7692 §7.1.1.2 lets a server
//! add to any offer) and a 32 KiB window, which any client window fits.
//! An offer with an unknown or repeated parameter, or a bad value, is
//! declined (§5); the next offer is tried, and with none left the
//! connection goes uncompressed.

use http::HeaderMap;
use http::header::SEC_WEBSOCKET_EXTENSIONS;

/// The extension's name in an offer.
const NAME: &str = "permessage-deflate";

/// Herald's answer to every offer it takes; `server_max_window_bits=15`
/// is added when the offer named it (§7.1.2.1: accepting it means echoing
/// it).
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The `Sec-WebSocket-Extensions` answer when one of the client's offers
/// is acceptable, for the first such offer; `None` when none is.
pub(super) fn negotiate(headers: &HeaderMap) -> Option<String> {
    let offers = headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        // A header that is not visible ASCII offers nothing Herald knows.
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| split_outside_quotes(value, ','));
    offers.into_iter().find_map(|offer| answer(&offer))
}

/// The answer to one offer (`name; param; param=value`), if taken.
fn answer(offer: &str) -> Option<String> {
    let mut parts = split_outside_quotes(offer, ';').into_iter();
    if !parts.next()?.trim().eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut echo_server_bits = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param.trim(), None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            // Herald's window is 15 bits; a smaller one it cannot honour.
            ("server_max_window_bits", Some(bits)) => {
                if window_bits(bits)? != 15 {
                    return None;
                }
                echo_server_bits = true;
            }
            // The client could limit its window; Herald inflates with the
            // largest, so it does not ask it to (§7.1.2.2).
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                window_bits(bits)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(match echo_server_bits {
        true => format!("{ANSWER}; server_max_window_bits=15"),
        false => ANSWER.to_owned(),
    })
}

/// A window-bits value: 8 to 15, without leading zeros (§7.1.2.1).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// A parameter value as a token, from a quoted string if it is one.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|v| !v.contains('"')),
        None => Some(value),
    }
}

/// `text` split at `sep` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().expect("never empty").push(c);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(values: &[&str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(SEC_WEBSOCKET_EXTENSIONS, v.parse().unwrap());
        }
        negotiate(&headers)
    }

    #[test]
    fn browsers_offers_are_taken() {
        // Chromium's and Firefox's offers.
        assert_eq!(
            offered(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(ANSWER)
        );
        assert_eq!(offered(&["permessage-deflate"]).as_deref(), Some(ANSWER));
        assert_eq!(
            offered(&[
                "Permessage-Deflate; Server_No_Context_Takeover; client_no_context_takeover"
            ])
            .as_deref(),
            Some(ANSWER)
        );
        assert_eq!(
            offered(&["permessage-deflate; client_max_window_bits=\"10\""]).as_deref(),
            Some(ANSWER)
        );
    }

    #[test]
    fn a_full_window_is_echoed() {
        assert_eq!(
            offered(&["permessage-deflate; server_max_window_bits=15"]),
            Some(format!("{ANSWER}; server_max_window_bits=15"))
        );
    }

    #[test]
    fn offers_herald_cannot_honour_fall_back_to_the_next_or_to_none() {
        // A smaller server window, then one without: the second is taken.
        assert_eq!(
            offered(&["permessage-deflate; server_max_window_bits=10, permessage-deflate"])
                .as_deref(),
            Some(ANSWER)
        );
        // Across header lines, after another extension.
        assert_eq!(
            offered(&[
                "x-webkit-deflate-frame",
                "permessage-deflate; server_max_window_bits=9",
                "permessage-deflate; client_max_window_bits=12",
            ])
            .as_deref(),
            Some(ANSWER)
        );
        for declined in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=015",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "permessage-deflate; client_max_window_bits=\"1,5\"",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(offered(&[declined]), None, "{declined:?}");
        }
        assert_eq!(offered(&[]), None);
    }
}
