//! In-memory key index: for every key, the revisions at which it changed.
//!
//! Values live in RocksDB keyed by revision; this index answers "which revision holds key K
//! at revision R" without touching disk, as etcd's tree index does. It is rebuilt from the
//! history column family when the store opens.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A point in the store's history: one main revision per committed write, one sub
/// revision per change inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rev {
    pub main: i64,
    pub sub: i64,
}

impl Rev {
    pub fn new(main: i64, sub: i64) -> Self {
        Rev { main, sub }
    }

    /// Big-endian encoding, so RocksDB orders keys by revision.
    pub fn to_key(self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        k[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        k
    }

    pub fn from_key(k: &[u8]) -> Option<Self> {
        if k.len() != 16 {
            return None;
        }
        let main = u64::from_be_bytes(k[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(k[8..].try_into().ok()?) as i64;
        Some(Rev { main, sub })
    }
}

/// What happened to a key at one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Put {
        create: i64,
        version: i64,
        lease: i64,
    },
    Tombstone,
}

/// One revision of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub rev: Rev,
    pub change: Change,
}

impl Entry {
    pub fn is_live(&self) -> bool {
        matches!(self.change, Change::Put { .. })
    }
}

/// A key's revisions, oldest first.
pub type KeyHistory = Vec<Entry>;

/// The state of a key at a revision: the entry in force, if the key is live then.
pub fn live_at(history: &[Entry], at: i64) -> Option<Entry> {
    let pos = history.partition_point(|e| e.rev.main <= at);
    let e = *history.get(pos.checked_sub(1)?)?;
    e.is_live().then_some(e)
}

/// Index of all keys.
#[derive(Default, Debug)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, KeyHistory>,
}

/// A key range as etcd expresses it: `end` empty means the single key, `end == [0]` means
/// every key from `start` on, otherwise the half-open interval.
#[derive(Debug, Clone)]
pub struct KeyRange<'a> {
    pub start: &'a [u8],
    pub end: &'a [u8],
}

impl<'a> KeyRange<'a> {
    pub fn new(start: &'a [u8], end: &'a [u8]) -> Self {
        KeyRange { start, end }
    }

    pub fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        if self.end.is_empty() {
            (Bound::Included(self.start), Bound::Included(self.start))
        } else if self.end == [0] {
            (Bound::Included(self.start), Bound::Unbounded)
        } else {
            (Bound::Included(self.start), Bound::Excluded(self.end))
        }
    }

    /// Whether the range is well formed (a non-empty interval or a single key).
    pub fn is_valid(&self) -> bool {
        self.end.is_empty() || self.end == [0] || self.start < self.end
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            key == self.start
        } else if self.end == [0] {
            key >= self.start
        } else {
            key >= self.start && key < self.end
        }
    }
}

impl KeyIndex {
    pub fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.keys.get(key)
    }

    /// Keys in `range` with their histories, in key order.
    pub fn range<'s>(
        &'s self,
        range: &KeyRange<'_>,
    ) -> impl Iterator<Item = (&'s Vec<u8>, &'s KeyHistory)> + 's {
        let valid = range.is_valid();
        let (lo, hi) = range.bounds();
        let (lo, hi) = if valid {
            (lo.map(<[u8]>::to_vec), hi.map(<[u8]>::to_vec))
        } else {
            (Bound::Excluded(Vec::new()), Bound::Excluded(Vec::new()))
        };
        let it = if valid {
            Some(self.keys.range::<Vec<u8>, _>((lo, hi)))
        } else {
            None
        };
        it.into_iter().flatten()
    }

    /// Appends a change (revisions only grow).
    pub fn push(&mut self, key: &[u8], entry: Entry) {
        match self.keys.get_mut(key) {
            Some(h) => h.push(entry),
            None => {
                self.keys.insert(key.to_vec(), vec![entry]);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Drops history older than `at`: for each key, revisions below `at` are removed except
    /// the newest of them when it is a live value (it is still the value at `at`, and the
    /// previous value of later events). Revisions at `at` and above are kept whole, so a
    /// watch starting at `at` sees every event of that revision. Returns removed revisions.
    pub fn compact(&mut self, at: i64) -> Vec<Rev> {
        let mut removed = Vec::new();
        self.keys.retain(|_, h| {
            let below = h.partition_point(|e| e.rev.main < at);
            if below == 0 {
                return true;
            }
            let keep_last = h[below - 1].is_live();
            let drop_n = if keep_last { below - 1 } else { below };
            removed.extend(h.drain(..drop_n).map(|e| e.rev));
            !h.is_empty()
        });
        removed
    }

    /// Every key with a live value now and its lease, for rebuilding lease attachments.
    pub fn live_leases(&self) -> impl Iterator<Item = (&Vec<u8>, i64)> {
        self.keys
            .iter()
            .filter_map(|(k, h)| match h.last()?.change {
                Change::Put { lease, .. } if lease != 0 => Some((k, lease)),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(main: i64, create: i64, version: i64) -> Entry {
        Entry {
            rev: Rev::new(main, 0),
            change: Change::Put {
                create,
                version,
                lease: 0,
            },
        }
    }

    fn tomb(main: i64) -> Entry {
        Entry {
            rev: Rev::new(main, 0),
            change: Change::Tombstone,
        }
    }

    #[test]
    fn live_at_follows_generations() {
        let h = vec![put(2, 2, 1), put(4, 2, 2), tomb(6), put(8, 8, 1)];
        assert_eq!(live_at(&h, 1), None);
        assert_eq!(live_at(&h, 3).unwrap().rev.main, 2);
        assert_eq!(live_at(&h, 5).unwrap().rev.main, 4);
        assert_eq!(live_at(&h, 6), None);
        assert_eq!(live_at(&h, 7), None);
        assert_eq!(live_at(&h, 100).unwrap().rev.main, 8);
    }

    #[test]
    fn compact_keeps_value_at_and_tombstone_at_revision() {
        let mut idx = KeyIndex::default();
        for e in [put(2, 2, 1), put(4, 2, 2), tomb(6)] {
            idx.push(b"a", e);
        }
        for e in [put(3, 3, 1), tomb(5)] {
            idx.push(b"b", e);
        }
        idx.push(b"c", put(7, 7, 1));
        let mut removed = idx.compact(6);
        removed.sort();
        // a: 2 removed, 4 kept (live before 6), 6 kept (at 6); b: both removed.
        assert_eq!(
            removed,
            vec![Rev::new(2, 0), Rev::new(3, 0), Rev::new(5, 0)]
        );
        assert_eq!(idx.get(b"a").unwrap().len(), 2);
        assert!(idx.get(b"b").is_none());
        assert_eq!(live_at(idx.get(b"a").unwrap(), 6), None);
        let removed = idx.compact(7);
        assert_eq!(removed, vec![Rev::new(4, 0), Rev::new(6, 0)]);
        assert!(idx.get(b"a").is_none());
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn range_bounds() {
        let mut idx = KeyIndex::default();
        for k in [&b"a"[..], b"ab", b"b", b"c"] {
            idx.push(k, put(1, 1, 1));
        }
        let keys = |s: &[u8], e: &[u8]| -> Vec<Vec<u8>> {
            idx.range(&KeyRange::new(s, e))
                .map(|(k, _)| k.clone())
                .collect()
        };
        // A single-key get never matches keys below it.
        assert_eq!(keys(b"a", b""), vec![b"a".to_vec()]);
        assert_eq!(keys(b"a", b"b"), vec![b"a".to_vec(), b"ab".to_vec()]);
        assert_eq!(keys(b"b", &[0]), vec![b"b".to_vec(), b"c".to_vec()]);
        assert!(keys(b"c", b"a").is_empty());
    }

    #[test]
    fn rev_key_orders_like_revisions() {
        let a = Rev::new(1, 5).to_key();
        let b = Rev::new(2, 0).to_key();
        assert!(a < b);
        assert_eq!(Rev::from_key(&b), Some(Rev::new(2, 0)));
    }
}
