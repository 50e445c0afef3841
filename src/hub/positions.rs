//! Tables of Kafka positions: next offset per `(topic, partition)`.

use std::sync::Arc;

use super::cursor::Encoder;

/// Offsets by topic and partition, topics sorted by name, partitions indexed
/// by number. `UNKNOWN` marks a partition whose position is not known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions {
    topics: Vec<(Arc<str>, Vec<i64>)>,
}

/// Placeholder for a partition slot with no position. Never encoded.
pub const UNKNOWN: i64 = -1;

impl Positions {
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self, topic: &str) -> Result<usize, usize> {
        self.topics.binary_search_by(|(t, _)| (**t).cmp(topic))
    }

    /// The next offset of one partition, if known.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        let i = self.index(topic).ok()?;
        let v = *self.topics[i].1.get(usize::try_from(partition).ok()?)?;
        (v != UNKNOWN).then_some(v)
    }

    /// All partition slots of a topic.
    pub fn topic(&self, topic: &str) -> Option<&[i64]> {
        self.index(topic).ok().map(|i| self.topics[i].1.as_slice())
    }

    pub fn topics(&self) -> impl Iterator<Item = &str> + Clone {
        self.topics.iter().map(|(t, _)| &**t)
    }

    /// Every known `(topic, partition, next_offset)`.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, i32, i64)> {
        self.topics.iter().flat_map(|(t, offsets)| {
            offsets
                .iter()
                .enumerate()
                .filter(|(_, o)| **o != UNKNOWN)
                .map(move |(p, o)| (t, p as i32, *o))
        })
    }

    fn slot(&mut self, topic: &Arc<str>, partition: i32) -> &mut i64 {
        let i = match self.index(topic) {
            Ok(i) => i,
            Err(i) => {
                self.topics.insert(i, (topic.clone(), Vec::new()));
                i
            }
        };
        let offsets = &mut self.topics[i].1;
        let p = usize::try_from(partition).unwrap_or(0);
        if offsets.len() <= p {
            offsets.resize(p + 1, UNKNOWN);
        }
        &mut offsets[p]
    }

    /// Sets a partition's next offset.
    pub fn set(&mut self, topic: &Arc<str>, partition: i32, next: i64) {
        *self.slot(topic, partition) = next;
    }

    /// Raises a partition's next offset to `next` if it is behind.
    pub fn raise(&mut self, topic: &Arc<str>, partition: i32, next: i64) {
        let slot = self.slot(topic, partition);
        if *slot < next {
            *slot = next;
        }
    }

    /// Raises every partition of the topics this table holds to the values
    /// in `other`, adding partitions `other` knows and this table lacks.
    pub fn raise_from(&mut self, other: &Positions) {
        for (topic, mine) in &mut self.topics {
            let Ok(j) = other.index(topic) else { continue };
            let theirs = &other.topics[j].1;
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), UNKNOWN);
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                if *t > *m {
                    *m = *t;
                }
            }
        }
    }

    /// Encodes the known positions as a cursor string. Called for every
    /// delivery: one allocation for the bytes, one for the text.
    pub fn encode_cursor(&self) -> String {
        let known = || {
            self.topics
                .iter()
                .filter(|(_, o)| o.iter().any(|o| *o != UNKNOWN))
        };
        // Varints: at most 10 bytes per number, usually 1-3.
        let size = 2 + known()
            .map(|(t, o)| t.len() + 4 + 6 * o.len())
            .sum::<usize>();
        let mut enc = Encoder::with_capacity(size);
        enc.topic_count(known().count());
        for (topic, offsets) in known() {
            let count = offsets.iter().filter(|o| **o != UNKNOWN).count();
            enc.topic(topic, count);
            for (p, o) in offsets.iter().enumerate() {
                if *o != UNKNOWN {
                    enc.partition(p as i32, *o);
                }
            }
        }
        enc.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::cursor::Cursor;

    #[test]
    fn raise_and_encode() {
        let t: Arc<str> = Arc::from("t");
        let u: Arc<str> = Arc::from("u");
        let mut a = Positions::new();
        a.set(&u, 0, 5);
        a.set(&t, 1, 10);
        assert_eq!(a.get("t", 0), None);
        assert_eq!(a.get("t", 1), Some(10));
        let mut b = Positions::new();
        b.set(&t, 0, 3);
        b.set(&t, 1, 8);
        b.set(&t, 2, 4);
        a.raise_from(&b);
        assert_eq!(a.get("t", 0), Some(3));
        assert_eq!(a.get("t", 1), Some(10));
        assert_eq!(a.get("t", 2), Some(4));
        let c = Cursor::decode(&a.encode_cursor()).unwrap();
        assert_eq!(c.to_string(), "t/0@3,t/1@10,t/2@4,u/0@5");
    }
}
