//! What a push carries: the record's envelope, as the live transports
//! send it, with one difference — its `cursor` is the position *at* the
//! record, not after it, so `/poll` from that cursor returns the record
//! itself. When the envelope does not fit a push message, `data` is left
//! out and `"truncated": true` set; the service worker fetches the record
//! from `/poll` with the cursor.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::hub::Hub;
use crate::hub::publication::Envelope;
use crate::record::Record;

/// RFC 8030 §7.2: a push service must accept 4,096 bytes of payload, the
/// `aes128gcm` ciphertext. That is one record (RFC 8291 §4: a 16-byte
/// salt, 4-byte record size, 1-byte key id length and the 65-byte key id)
/// with a 1-byte padding delimiter and a 16-byte tag around the
/// plaintext.
pub const MAX_PLAINTEXT: usize = 4096 - 86 - 1 - 16;

/// The plaintext of the push of `record` on `channel`.
pub fn plaintext(hub: &Hub, channel: &str, record: &Record) -> Vec<u8> {
    let cursor = hub.cursor_at(channel, record);
    let full = Envelope::encode(channel, record).with_cursor(&cursor);
    if full.len() <= MAX_PLAINTEXT {
        return full;
    }
    let mut truncated = serde_json::json!({
        "channel": channel,
        "cursor": cursor,
        "topic": &*record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "ts": record.timestamp,
        "key": serde_json::Value::Null,
        "truncated": true,
    });
    if let Some(key) = record.key.as_deref() {
        truncated["key"] = match std::str::from_utf8(key) {
            Ok(s) => s.into(),
            Err(_) => {
                truncated["key_encoding"] = "base64".into();
                STANDARD.encode(key).into()
            }
        };
    }
    let text = truncated.to_string().into_bytes();
    if text.len() <= MAX_PLAINTEXT {
        return text;
    }
    // A key of kilobytes: left out too (the record in /poll has it).
    truncated["key"] = serde_json::Value::Null;
    if let Some(map) = truncated.as_object_mut() {
        map.remove("key_encoding");
    }
    truncated.to_string().into_bytes()
}
