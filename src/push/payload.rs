//! What a push carries: the record's envelope, as the live transports
//! send it, with one difference — its `cursor` is the position *at* the
//! record, not after it, so `/poll` from that cursor returns the record
//! itself. When the envelope does not fit a push message, `data` is left
//! out and `"truncated": true` set; the service worker fetches the record
//! from `/poll` with the cursor.

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
    // The same envelope without `data`: its other fields as the hub
    // encodes them (key encoding included).
    let mut truncated: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&full).expect("the hub's envelope is a JSON object");
    truncated.remove("data");
    truncated.remove("encoding");
    truncated.insert("truncated".into(), true.into());
    let text = serde_json::to_vec(&truncated).expect("JSON in memory");
    if text.len() <= MAX_PLAINTEXT {
        return text;
    }
    // A key of kilobytes: left out too (the record in /poll has it).
    truncated.insert("key".into(), serde_json::Value::Null);
    truncated.remove("key_encoding");
    serde_json::to_vec(&truncated).expect("JSON in memory")
}
