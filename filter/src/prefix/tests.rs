#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::index::View;
use super::*;
use crate::body::inspect;
use crate::store::{Store, StoreError};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

pub(super) fn cfg(block_bytes: usize, max_blocks: usize) -> Prefix {
    Prefix {
        block_bytes,
        max_blocks,
        index_entries: 1024,
        weight: 2.0,
        load_weight: 1.0,
        min_match_blocks: 1,
        seed: 7,
    }
}

/// The whole chain of a body (every block), checked against the points `chain` hashes.
fn chain_of_body(body: &str, c: &Prefix) -> Vec<u64> {
    let info = inspect(body.as_bytes()).unwrap();
    let all = chain_of(&canonical(&info, c.block_bytes * c.max_blocks), c, "small");
    let ch = chain(&info, c, "small");
    assert_eq!(ch.blocks, all.len());
    assert_eq!(ch.points, points(&all, &ch.marks));
    all
}

fn chat(messages: &[(&str, &str)]) -> String {
    let msgs: Vec<String> = messages
        .iter()
        .map(|(r, c)| {
            format!(
                r#"{{"role":{},"content":{}}}"#,
                serde_json::to_string(r).unwrap(),
                serde_json::to_string(c).unwrap()
            )
        })
        .collect();
    format!(r#"{{"model":"m","messages":[{}]}}"#, msgs.join(","))
}

fn long(seed: &str, n: usize) -> String {
    (0..n).map(|i| format!("{seed} {i}. ")).collect()
}

#[test]
fn same_prefix_same_chain_whatever_the_json_layout() {
    let c = cfg(32, 64);
    let a = chat(&[
        ("system", &long("sys", 20)),
        ("user", "hello there how are you"),
    ]);
    let spaced = a.replace(',', " ,\n  ").replace(':', " : ");
    // Keys reordered and a string written with escapes decode to the same text.
    let reordered = format!(
        r#"{{ "messages" : [ {{"content":{}, "role":"system"}}, {{"content":"hello there how are \u0079ou","role":"user"}} ], "model":"other" }}"#,
        serde_json::to_string(&long("sys", 20)).unwrap()
    );
    let ca = chain_of_body(&a, &c);
    assert!(ca.len() > 4);
    assert_eq!(ca, chain_of_body(&spaced, &c));
    assert_eq!(ca, chain_of_body(&reordered, &c));
}

#[test]
fn a_growing_conversation_extends_its_chain() {
    let c = cfg(32, 256);
    let sys = long("sys", 20);
    let turn1 = chat(&[("system", &sys), ("user", &long("q1", 10))]);
    let turn2 = chat(&[
        ("system", &sys),
        ("user", &long("q1", 10)),
        ("assistant", &long("a1", 10)),
        ("user", &long("q2", 10)),
    ]);
    let (c1, c2) = (chain_of_body(&turn1, &c), chain_of_body(&turn2, &c));
    assert!(c2.len() > c1.len());
    // Every whole block of turn 1 is a block of turn 2 (its last, partial block is not
    // hashed).
    assert_eq!(c1[..], c2[..c1.len()]);
}

#[test]
fn a_changed_earlier_message_changes_every_later_block() {
    let c = cfg(32, 256);
    let a = chat(&[("system", &long("sys", 20)), ("user", &long("q", 20))]);
    let b = chat(&[("system", &long("sys", 20)), ("user", &long("Q", 20))]);
    let (ca, cb) = (chain_of_body(&a, &c), chain_of_body(&b, &c));
    assert_eq!(ca.len(), cb.len());
    let first_diff = ca.iter().zip(&cb).position(|(x, y)| x != y).unwrap();
    assert!(first_diff > 0, "the system prompt's blocks are shared");
    for (x, y) in ca.iter().zip(&cb).skip(first_diff) {
        assert_ne!(x, y);
    }
    // The role is part of the prefix too.
    let d = chat(&[("user", &long("sys", 20)), ("user", &long("q", 20))]);
    assert_ne!(ca[0], chain_of_body(&d, &c)[0]);
}

#[test]
fn message_boundaries_count() {
    let c = cfg(16, 64);
    let a = chat(&[
        ("user", "abcdefghijklmnopqrstuvwxyz"),
        ("user", "0123456789"),
    ]);
    let b = chat(&[
        ("user", "abcdefghijklmnop"),
        ("user", "qrstuvwxyz0123456789"),
    ]);
    assert_ne!(chain_of_body(&a, &c)[1], chain_of_body(&b, &c)[1]);
}

#[test]
fn text_parts_and_prompts_are_hashed() {
    let c = cfg(16, 64);
    let parts = r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a long enough text part, really"},{"type":"image_url","image_url":{"url":"data:x"}}]}]}"#;
    let plain = r#"{"messages":[{"role":"user","content":["a long enough text part, really"]}]}"#;
    assert!(!chain_of_body(parts, &c).is_empty());
    let prompt = r#"{"model":"m","prompt":"a long enough completion prompt, really"}"#;
    let prompt2 = r#"{"prompt":"a long enough completion prompt, really","model":"x"}"#;
    assert!(chain_of_body(prompt, &c).len() >= 2);
    assert_eq!(chain_of_body(prompt, &c), chain_of_body(prompt2, &c));
    let _ = plain;
}

#[test]
fn pools_and_seeds_separate_chains() {
    let c = cfg(16, 64);
    let body = chat(&[("user", &long("x", 10))]);
    let info = inspect(body.as_bytes()).unwrap();
    let small = chain(&info, &c, "small");
    assert_ne!(small, chain(&info, &c, "large"));
    let mut other = c.clone();
    other.seed = 8;
    assert_ne!(small, chain(&info, &other, "small"));
}

#[test]
fn the_chain_is_capped() {
    let c = cfg(16, 5);
    let body = chat(&[("user", &long("x", 200))]);
    assert_eq!(chain_of_body(&body, &c).len(), 5);
    // Shorter than one block: no chain, no affinity.
    assert!(chain_of_body(r#"{"messages":[{"role":"user","content":"hi"}]}"#, &c).is_empty());
    let info = inspect(body.as_bytes()).unwrap();
    assert_eq!(canonical(&info, 40).len(), 40);
}

#[test]
fn grid_is_powers_of_two() {
    assert_eq!(grid(0), Vec::<usize>::new());
    assert_eq!(grid(1), vec![1]);
    assert_eq!(grid(12), vec![1, 2, 4, 8]);
    assert_eq!(grid(1024).len(), 11);
}

type Hook = Box<dyn FnMut(&Mem)>;

/// Shared data with Envoy's CAS rules; counts calls; may let another writer in before a set.
#[derive(Default)]
pub(super) struct Mem {
    pub map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next: Cell<u32>,
    pub calls: Cell<usize>,
    pub interfere: RefCell<Option<Hook>>,
}

impl Store for Mem {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.calls.set(self.calls.get() + 1);
        Ok(self.map.borrow().get(key).cloned())
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.calls.set(self.calls.get() + 1);
        let hook = self.interfere.borrow_mut().take();
        if let Some(mut f) = hook {
            f(self);
        }
        let mut map = self.map.borrow_mut();
        if let Some((_, cur)) = map.get(key) {
            if cas != 0 && cas != *cur {
                return Err(StoreError::CasMismatch);
            }
        }
        self.next.set(self.next.get() + 1);
        map.insert(key.to_string(), (value.to_vec(), self.next.get()));
        Ok(())
    }
}

fn view(tags: &[u64]) -> View<'_> {
    View {
        shards: 64,
        pool: 1,
        endpoints: tags,
    }
}

fn route(store: &Mem, tags: &[u64], chain: &[u64], picked: usize, now: u32) -> Vec<Hit> {
    let v = view(tags);
    let look = lookup(store, &v, &points(chain, &[]));
    let found = look.hits.clone();
    record(store, &v, &points(chain, &[]), look, tags[picked], now);
    found
}

#[test]
fn the_index_finds_the_longest_prefix_sent_before() {
    let store = Mem::default();
    let tags = [11, 22, 33];
    let turn1: Vec<u64> = (1..=20).collect();
    assert!(route(&store, &tags, &turn1, 1, 100).is_empty());
    // Turn 2 extends turn 1: its longest indexed block is 16 (grid of 20 blocks).
    let mut turn2 = turn1.clone();
    turn2.extend(100..130);
    let found = lookup(&store, &view(&tags), &points(&turn2, &[]));
    assert_eq!(
        found.longest(),
        Some(Hit {
            blocks: 16,
            endpoint: 1
        })
    );
    // Another conversation sharing only the first 3 blocks matches 2.
    let other: Vec<u64> = [1, 2, 3].into_iter().chain(500..540).collect();
    let found = lookup(&store, &view(&tags), &points(&other, &[]));
    assert_eq!(found.longest().map(|h| h.blocks), Some(2));
    assert!(found.calls <= 4);
}

#[test]
fn a_turn_matches_the_whole_previous_turn_at_its_message_end() {
    // Turn 1 (system + user) is 20 blocks: the grid alone would match turn 2 at 16 blocks.
    // The index also keeps turn 1's last message end, which is a message end of turn 2 too.
    let c = cfg(32, 512);
    let history = [("system", long("sys", 60)), ("user", long("question", 20))];
    let turn1 = chat(&[(history[0].0, &history[0].1), (history[1].0, &history[1].1)]);
    let turn2 = chat(&[
        (history[0].0, &history[0].1),
        (history[1].0, &history[1].1),
        ("assistant", &long("answer", 30)),
        ("user", "and then?"),
    ]);
    let ch1 = chain(&inspect(turn1.as_bytes()).unwrap(), &c, "small");
    let ch2 = chain(&inspect(turn2.as_bytes()).unwrap(), &c, "small");
    let last1 = *ch1.marks.last().unwrap();
    assert!(!grid(ch1.len()).contains(&last1), "{ch1:?}");
    assert!(ch2.marks.contains(&last1));
    assert_eq!(
        chain_of_body(&turn1, &c)[..],
        chain_of_body(&turn2, &c)[..ch1.len()]
    );
    let store = Mem::default();
    let tags = [11, 22, 33];
    let v = view(&tags);
    let look = lookup(&store, &v, &ch1.points);
    record(&store, &v, &ch1.points, look, 22, 5);
    // A spray of other conversations with the same system prompt, sent elsewhere.
    for (i, tag) in [11u64, 33].iter().enumerate() {
        let other = chat(&[
            (history[0].0, &history[0].1),
            ("user", &long(&format!("other{i}"), 25)),
        ]);
        let ch = chain(&inspect(other.as_bytes()).unwrap(), &c, "small");
        let look = lookup(&store, &v, &ch.points);
        record(&store, &v, &ch.points, look, *tag, 6);
    }
    let found = lookup(&store, &v, &ch2.points);
    assert_eq!(
        found.longest(),
        Some(Hit {
            blocks: last1,
            endpoint: 1
        })
    );
    assert!(found.calls <= 6, "{}", found.calls);
}

#[test]
fn marks_are_message_ends_in_whole_blocks() {
    let c = cfg(16, 4);
    let body = chat(&[("system", &long("s", 3)), ("user", &long("u", 10))]);
    let ch = chain(&inspect(body.as_bytes()).unwrap(), &c, "small");
    assert_eq!(ch.len(), 4);
    // The system message ends inside the chain; the user message is cut by max_blocks.
    assert_eq!(ch.marks.len(), 1);
    assert!(ch.marks[0] >= 1 && ch.marks[0] < 4);
    assert_eq!(positions(4, &[3, 3, 9, 0]), vec![1, 2, 3, 4]);
    assert!(chain(&inspect(br#"{"prompt":"x"}"#).unwrap(), &c, "small")
        .marks
        .is_empty());
}

#[test]
fn endpoints_that_left_the_pool_are_ignored_and_forgotten() {
    let store = Mem::default();
    let chain: Vec<u64> = (1..=8).collect();
    route(&store, &[11, 22], &chain, 0, 100);
    // 11 left the pool: its entries match nothing.
    assert!(lookup(&store, &view(&[22, 33]), &points(&chain, &[]))
        .hits
        .is_empty());
    // And the next write to a shard drops them.
    let mut shard = Shard::default();
    shard.upsert(
        ShardEntry {
            hash: 1,
            endpoint: 11,
            pool: 1,
            stamp: 1,
        },
        &|_| true,
    );
    shard.upsert(
        ShardEntry {
            hash: 2,
            endpoint: 22,
            pool: 1,
            stamp: 1,
        },
        &|t| t != 11,
    );
    assert_eq!(shard.len(), 1);
    assert_eq!(shard.entries()[0].endpoint, 22);
}

#[test]
fn a_full_shard_evicts_its_oldest_entry() {
    let mut shard = Shard::default();
    for i in 0..(SHARD_SLOTS as u64 + 5) {
        let entry = ShardEntry {
            hash: i,
            endpoint: 1,
            pool: 1,
            stamp: 1000 - i as u32,
        };
        shard.upsert(entry, &|_| true);
        assert!(shard.len() <= SHARD_SLOTS);
    }
    // Stamps fall with i, so each insert evicted the oldest (smallest stamp) before it: the
    // newest insert survives, the first ones (newest stamps) survive too.
    assert_eq!(shard.len(), SHARD_SLOTS);
    assert!(shard.find(0, 1).is_some());
    assert!(shard.find(SHARD_SLOTS as u64 + 4, 1).is_some());
    // Re-sending a block to another endpoint replaces its entry.
    shard.upsert(
        ShardEntry {
            hash: 0,
            endpoint: 9,
            pool: 1,
            stamp: 2000,
        },
        &|_| true,
    );
    assert_eq!(shard.find(0, 1).unwrap().endpoint, 9);
    assert_eq!(shard.len(), SHARD_SLOTS);
    assert!(
        shard.find(0, 2).is_none(),
        "another pool's entry is not this one"
    );
}

#[test]
fn full_hashes_are_verified() {
    let store = Mem::default();
    let tags = [11];
    let chain: Vec<u64> = vec![5];
    route(&store, &tags, &chain, 0, 1);
    // 5 + 64 lands in the same shard (64 shards) but is another block.
    assert!(lookup(&store, &view(&tags), &points(&[69], &[]))
        .hits
        .is_empty());
    assert_eq!(
        lookup(&store, &view(&tags), &points(&[5], &[])).hits.len(),
        1
    );
}

#[test]
fn corrupted_values_read_as_empty_and_are_overwritten() {
    let store = Mem::default();
    let tags = [11];
    let chain: Vec<u64> = vec![5];
    store.map.borrow_mut().insert(key(5), (vec![1, 2, 3], 1));
    assert!(lookup(&store, &view(&tags), &points(&chain, &[]))
        .hits
        .is_empty());
    route(&store, &tags, &chain, 0, 1);
    assert_eq!(
        lookup(&store, &view(&tags), &points(&chain, &[]))
            .hits
            .len(),
        1
    );
}

#[test]
fn a_lost_cas_race_is_retried_once() {
    let store = Mem::default();
    let tags = [11, 22];
    let chain: Vec<u64> = vec![5];
    let v = view(&tags);
    let look = lookup(&store, &v, &points(&chain, &[]));
    // Another worker writes the same shard between our read and our write.
    *store.interfere.borrow_mut() = Some(Box::new(|m: &Mem| {
        let look = lookup(m, &view(&[11, 22]), &points(&[69], &[]));
        record(m, &view(&[11, 22]), &points(&[69], &[]), look, 22, 1);
    }));
    record(&store, &v, &points(&chain, &[]), look, 11, 1);
    // Both writes landed.
    assert_eq!(
        lookup(&store, &v, &points(&[5], &[]))
            .longest()
            .unwrap()
            .endpoint,
        0
    );
    assert_eq!(
        lookup(&store, &v, &points(&[69], &[]))
            .longest()
            .unwrap()
            .endpoint,
        1
    );
}

#[test]
fn host_calls_stay_within_the_budget() {
    let store = Mem::default();
    let tags = [11, 22];
    for n in [1usize, 7, 100, 1024] {
        // Distinct hashes, so every grid block lands in its own shard at worst.
        let chain: Vec<u64> = (0..n as u64).map(|i| i * 64 + n as u64).collect();
        let before = store.calls.get();
        let v = View {
            shards: 4096,
            pool: 1,
            endpoints: &tags,
        };
        let look = lookup(&store, &v, &points(&chain, &[]));
        let calls = record(&store, &v, &points(&chain, &[]), look, 11, 1);
        assert_eq!(store.calls.get() - before, calls);
        assert!(calls <= MAX_HOST_CALLS, "{n} blocks: {calls} calls");
    }
    // A repeated request finds everything fresh and writes nothing.
    let chain: Vec<u64> = (1..=8).collect();
    route(&store, &tags, &chain, 0, 1);
    let before = store.calls.get();
    route(&store, &tags, &chain, 0, 2);
    assert!(store.calls.get() - before <= 3);
}

#[test]
fn matched_fractions_use_the_longest_hit_and_the_minimum() {
    let hits = [
        Hit {
            blocks: 2,
            endpoint: 0,
        },
        Hit {
            blocks: 8,
            endpoint: 1,
        },
        Hit {
            blocks: 1,
            endpoint: 1,
        },
        Hit {
            blocks: 4,
            endpoint: 9,
        },
    ];
    assert_eq!(matched_fractions(&hits, 3, 16, 0, 1), vec![0.125, 0.5, 0.0]);
    assert_eq!(matched_fractions(&hits, 3, 16, 0, 4), vec![0.0, 0.5, 0.0]);
    assert_eq!(matched_fractions(&hits, 3, 0, 0, 1), vec![0.0; 3]);
    // 2 shared (system prompt) blocks of 10: a hit within them is no match, past them the
    // fraction is of the 8 blocks after them.
    assert_eq!(matched_fractions(&hits, 3, 10, 2, 1), vec![0.0, 0.75, 0.0]);
    assert_eq!(matched_fractions(&hits, 3, 8, 8, 1), vec![0.0; 3]);
    assert_eq!(matched_blocks(&hits, 1), 8);
    assert_eq!(matched_blocks(&hits, 2), 0);
}

#[test]
fn turns_are_bounded_for_a_hostile_body() {
    let many = vec![r#"{"role":"user","content":"x"}"#; crate::body::MAX_TURNS + 500].join(",");
    let body = format!(r#"{{"messages":[{many}]}}"#);
    let info = inspect(body.as_bytes()).unwrap();
    assert_eq!(info.messages as usize, crate::body::MAX_TURNS + 500);
    assert_eq!(info.turns.len(), crate::body::MAX_TURNS);
    let c = cfg(16, 1024);
    assert_eq!(chain(&info, &c, "p").len(), 1024);
}

#[test]
fn leading_system_messages_are_shared_blocks() {
    let c = cfg(16, 64);
    let sys = long("sys", 10);
    let shared_of = |body: &str| chain(&inspect(body.as_bytes()).unwrap(), &c, "small").shared;
    let with_system = chat(&[("system", &sys), ("user", &long("question", 10))]);
    let ch = chain(&inspect(with_system.as_bytes()).unwrap(), &c, "small");
    // The system message's whole blocks: its end is the first mark.
    assert!(ch.shared > 0 && ch.shared < ch.blocks, "{ch:?}");
    assert_eq!(Some(&ch.shared), ch.marks.first());
    // Two leading system/developer messages are both shared.
    let two = chat(&[("system", &sys), ("developer", &sys), ("user", "q")]);
    assert!(shared_of(&two) > ch.shared);
    // No system message, or a system message after a user one: nothing is shared.
    assert_eq!(shared_of(&chat(&[("user", &sys), ("assistant", &sys)])), 0);
    assert_eq!(shared_of(&chat(&[("user", "q"), ("system", &sys)])), 0);
    assert_eq!(
        shared_of(&format!(
            r#"{{"prompt":{}}}"#,
            serde_json::to_string(&sys).unwrap()
        )),
        0
    );
    // A system prompt cut by the limit: every block is shared.
    let small = cfg(16, 4);
    let ch = chain(&inspect(with_system.as_bytes()).unwrap(), &small, "small");
    assert_eq!((ch.blocks, ch.shared), (4, 4));
    // Only system messages: all shared.
    let only = chat(&[("system", &sys)]);
    let ch = chain(&inspect(only.as_bytes()).unwrap(), &c, "small");
    assert_eq!(ch.shared, ch.blocks);
}

#[test]
fn a_conversation_writes_its_new_positions_before_refreshing_old_ones() {
    // Turn 1: 40 blocks, messages ending at 10, 20, 30, 40: 10 positions with the grid,
    // indexed (over a few requests) long ago. Turn 2 adds two messages (44, 48) at 1000 s: all
    // of turn 1's entries are stale, rewriting them all does not fit one request's calls,
    // and the two new positions (which turn 3 looks for) go first.
    let store = Mem::default();
    let tags = [11, 22];
    let v = View {
        shards: 4096,
        pool: 1,
        endpoints: &tags,
    };
    let chain: Vec<u64> = (1..=64).map(|i| i * 7919).collect();
    let p1 = points(&chain[..40], &[10, 20, 30, 40]);
    for now in 1..4 {
        let look = lookup(&store, &v, &p1);
        record(&store, &v, &p1, look, 11, now);
    }
    let look = lookup(&store, &v, &p1);
    assert_eq!(
        look.longest().map(|h| (h.blocks, h.endpoint)),
        Some((40, 0))
    );
    let p2 = points(&chain[..48], &[10, 20, 30, 40, 44, 48]);
    let look = lookup(&store, &v, &p2);
    assert_eq!(look.longest().map(|h| h.blocks), Some(40));
    assert!(record(&store, &v, &p2, look, 11, 1000) <= MAX_HOST_CALLS);
    let p3 = points(&chain[..56], &[10, 20, 30, 40, 44, 48, 52, 56]);
    let found = lookup(&store, &v, &p3);
    assert_eq!(
        found.longest().map(|h| (h.blocks, h.endpoint)),
        Some((48, 0))
    );
}
