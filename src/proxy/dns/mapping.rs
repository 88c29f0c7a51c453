//! The synthetic address table: each allowed name the policy DNS answers gets one address
//! of the synthetic range, and each address names at most one host at a time. Bounded in
//! names; an entry lives `lifetime` after its last use (an answer or a connection), and only
//! an expired entry is ever evicted, so a full table of live names refuses new ones.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use lru::LruCache;

/// The table is full of names used within their lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the synthetic address table holds {capacity} names, all used in the last {lifetime:?}")]
pub struct TableFull {
    /// The table's capacity in names.
    pub capacity: usize,
    /// How long an entry lives after its last use.
    pub lifetime: Duration,
}

/// Name to address and back, shared by the DNS server and the transparent listeners.
#[derive(Debug)]
pub struct SyntheticMap {
    range: Ipv4Net,
    capacity: usize,
    lifetime: Duration,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    /// Least recently used first out; its order is the order of `last_used`.
    by_name: LruCache<Arc<str>, Entry>,
    by_addr: HashMap<Ipv4Addr, Arc<str>>,
    /// Offset in the range of the next address to try: addresses go round the whole range
    /// before one is handed out again.
    cursor: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    addr: Ipv4Addr,
    last_used: Instant,
}

impl SyntheticMap {
    /// A table handing out addresses of `range` (its first and last address excepted), for
    /// at most `max_names` names (fewer when the range is smaller).
    pub fn new(range: Ipv4Net, max_names: usize, lifetime: Duration) -> Self {
        let capacity = max_names.min(Self::pool_size(range) as usize).max(1);
        SyntheticMap {
            range,
            capacity,
            lifetime,
            table: Mutex::new(Table { by_name: LruCache::unbounded(), by_addr: HashMap::new(), cursor: 0 }),
        }
    }

    /// Usable addresses: all of the range but its first and last.
    fn pool_size(range: Ipv4Net) -> u32 {
        let size = 1u64 << (32 - u32::from(range.prefix_len()));
        u32::try_from(size.saturating_sub(2)).unwrap_or(u32::MAX).max(1)
    }

    /// The range handed out.
    pub fn range(&self) -> Ipv4Net {
        self.range
    }

    /// Most names held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long an entry lives after its last use.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The address of `name` (normalised), assigned now unless it has one; its use is
    /// recorded. Evicts the least recently used entry when full, only if it has expired.
    pub fn assign(&self, name: &str, now: Instant) -> Result<Ipv4Addr, TableFull> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = table.by_name.get_mut(name) {
            entry.last_used = now;
            return Ok(entry.addr);
        }
        if table.by_name.len() >= self.capacity {
            match table.by_name.peek_lru() {
                Some((_, oldest)) if self.expired(oldest, now) => {
                    if let Some((_, evicted)) = table.by_name.pop_lru() {
                        table.by_addr.remove(&evicted.addr);
                    }
                }
                _ => return Err(TableFull { capacity: self.capacity, lifetime: self.lifetime }),
            }
        }
        let pool = Self::pool_size(self.range);
        let first = u32::from(self.range.network()) + 1;
        let addr = loop {
            let candidate = Ipv4Addr::from(first + table.cursor % pool);
            table.cursor = (table.cursor + 1) % pool;
            if !table.by_addr.contains_key(&candidate) {
                break candidate;
            }
        };
        let name: Arc<str> = name.into();
        table.by_addr.insert(addr, name.clone());
        table.by_name.put(name, Entry { addr, last_used: now });
        Ok(addr)
    }

    /// The name `addr` was handed out for, unless it is unknown or expired; a hit counts
    /// as a use (a long-lived client keeps its name alive by connecting).
    pub fn name_of(&self, addr: Ipv4Addr, now: Instant) -> Option<Arc<str>> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let name = table.by_addr.get(&addr)?.clone();
        let entry = table.by_name.get_mut(&name)?;
        if self.expired(entry, now) {
            return None;
        }
        entry.last_used = now;
        Some(name)
    }

    /// The address `name` holds now, if any (no use recorded).
    pub fn addr_of(&self, name: &str) -> Option<Ipv4Addr> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).by_name.peek(name).map(|e| e.addr)
    }

    /// How many names are held (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).by_name.len()
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.last_used) > self.lifetime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Duration = Duration::from_secs(60);

    fn map(range: &str, names: usize) -> SyntheticMap {
        SyntheticMap::new(range.parse().unwrap(), names, LIFE)
    }

    #[test]
    fn a_name_keeps_its_address_and_an_address_names_one_host() {
        let m = map("198.18.0.0/15", 100);
        let now = Instant::now();
        let a = m.assign("api.example.com", now).unwrap();
        let b = m.assign("db.example.com", now).unwrap();
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 1), "the first address after the range's own");
        assert_ne!(a, b);
        assert_eq!(m.assign("api.example.com", now).unwrap(), a);
        assert_eq!(m.name_of(a, now).as_deref(), Some("api.example.com"));
        assert_eq!(m.name_of(b, now).as_deref(), Some("db.example.com"));
        assert_eq!(m.name_of(Ipv4Addr::new(198, 18, 0, 99), now), None, "never handed out");
        assert!(m.range().contains(&a) && m.range().contains(&b));
    }

    #[test]
    fn a_full_table_evicts_only_expired_names() {
        let m = map("198.18.0.0/15", 2);
        let t0 = Instant::now();
        let a = m.assign("a.example", t0).unwrap();
        m.assign("b.example", t0 + Duration::from_secs(30)).unwrap();
        let err = m.assign("c.example", t0 + Duration::from_secs(50)).unwrap_err();
        assert_eq!(err, TableFull { capacity: 2, lifetime: LIFE });
        assert_eq!(m.name_of(a, t0 + Duration::from_secs(50)).as_deref(), Some("a.example"), "still alive");
        // a's connection above renewed it: at t0+111 a is 61 s unused, b 81 s.
        let later = t0 + Duration::from_secs(111);
        let c = m.assign("c.example", later).unwrap();
        assert_eq!(m.addr_of("b.example"), None, "the least recently used expired name went");
        assert_eq!(m.addr_of("a.example"), Some(a));
        assert_ne!(c, a);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn an_expired_address_resolves_to_nothing_until_its_name_is_asked_again() {
        let m = map("198.18.0.0/15", 10);
        let t0 = Instant::now();
        let a = m.assign("a.example", t0).unwrap();
        let late = t0 + LIFE + Duration::from_secs(1);
        assert_eq!(m.name_of(a, late), None, "past its lifetime, a connection finds no name");
        assert_eq!(m.assign("a.example", late).unwrap(), a, "asked again, it keeps its address");
        assert_eq!(m.name_of(a, late).as_deref(), Some("a.example"));
    }

    #[test]
    fn addresses_go_round_the_range_before_one_is_reused() {
        // A /29: 6 usable addresses, 3 names at most.
        let m = map("10.99.0.0/29", 3);
        let mut now = Instant::now();
        let mut seen = Vec::new();
        for i in 0..12 {
            now += LIFE * 2;
            let addr = m.assign(&format!("n{i}.example"), now).unwrap();
            assert!(addr != Ipv4Addr::new(10, 99, 0, 0) && addr != Ipv4Addr::new(10, 99, 0, 7), "{addr}");
            seen.push(addr);
        }
        assert_eq!(&seen[..6], &seen[6..], "round robin over the 6 usable addresses");
        let distinct: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(distinct.len(), 6);
        assert_eq!(m.len(), 3, "bounded by the name limit");
        // The reassigned address names only its new host.
        assert_eq!(m.name_of(seen[11], now).as_deref(), Some("n11.example"));
        assert_eq!(m.addr_of("n5.example"), None);
    }

    #[test]
    fn the_capacity_is_bounded_by_the_range() {
        assert_eq!(map("10.99.0.0/30", 100).capacity(), 2);
        assert_eq!(map("198.18.0.0/15", 100_000_000).capacity(), 131_070);
    }
}
