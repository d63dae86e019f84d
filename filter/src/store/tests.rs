#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use std::cell::Cell;

/// A store where another writer always gets in between (every set is a CAS mismatch).
struct AlwaysContended {
    sets: Cell<usize>,
}

impl Store for AlwaysContended {
    fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(Some((vec![1], 7)))
    }
    fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), StoreError> {
        self.sets.set(self.sets.get() + 1);
        Err(StoreError::CasMismatch)
    }
}

#[test]
fn retries_are_bounded() {
    let s = AlwaysContended { sets: Cell::new(0) };
    let r = update(&s, "k", |_| Step::Write(vec![2], ()));
    assert!(matches!(r, Err(StoreError::Other(m)) if m.contains("contended")));
    assert_eq!(s.sets.get(), MAX_CAS_RETRIES);
}

#[test]
fn keep_writes_nothing() {
    let s = AlwaysContended { sets: Cell::new(0) };
    assert_eq!(
        update(&s, "k", |v| Step::Keep(v.map(<[u8]>::len))).unwrap(),
        Some(1)
    );
    assert_eq!(s.sets.get(), 0);
}

#[test]
fn missing_keys_are_created_with_the_create_cas() {
    struct Empty(Cell<u32>);
    impl Store for Empty {
        fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            Ok(None)
        }
        fn set(&self, _: &str, _: &[u8], cas: u32) -> Result<(), StoreError> {
            self.0.set(cas);
            Ok(())
        }
    }
    let s = Empty(Cell::new(0));
    update(&s, "k", |v| {
        assert!(v.is_none());
        Step::Write(vec![1], ())
    })
    .unwrap();
    assert_eq!(s.0.get(), CREATE_CAS);
}

/// One key with Envoy's CAS rules, counting reads.
struct OneKey {
    value: std::cell::RefCell<Option<(Vec<u8>, u32)>>,
    gets: Cell<usize>,
}

impl Store for OneKey {
    fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.gets.set(self.gets.get() + 1);
        Ok(self.value.borrow().clone())
    }
    fn set(&self, _: &str, v: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut cur = self.value.borrow_mut();
        if let Some((_, c)) = cur.as_ref() {
            if cas != 0 && cas != *c {
                return Err(StoreError::CasMismatch);
            }
        }
        let next = cur.as_ref().map_or(1, |(_, c)| c + 1);
        *cur = Some((v.to_vec(), next));
        Ok(())
    }
}

fn add_one(v: Option<&[u8]>) -> Step<u8> {
    let n = v.and_then(|b| b.first().copied()).unwrap_or(0) + 1;
    Step::Write(vec![n], n)
}

#[test]
fn update_after_a_current_read_reads_nothing_more() {
    let s = OneKey {
        value: std::cell::RefCell::new(Some((vec![4], 9))),
        gets: Cell::new(0),
    };
    let read = s.get("k").unwrap();
    assert_eq!(update_after(&s, "k", read, add_one).unwrap(), 5);
    assert_eq!(s.gets.get(), 1, "the caller's read was the only one");
    assert_eq!(
        s.value.borrow().as_ref().map(|(v, _)| v.clone()),
        Some(vec![5])
    );
}

#[test]
fn update_after_a_stale_read_reads_again_and_loses_no_write() {
    for stale in [None, Some((vec![4], 9))] {
        let s = OneKey {
            value: std::cell::RefCell::new(Some((vec![4], 9))),
            gets: Cell::new(0),
        };
        // Another worker wrote after the caller's read (or the caller read nothing).
        s.set("k", &[7], 9).unwrap();
        assert_eq!(update_after(&s, "k", stale, add_one).unwrap(), 8);
        assert_eq!(
            s.gets.get(),
            1,
            "one read after the failed compare-and-swap"
        );
        assert_eq!(
            s.value.borrow().as_ref().map(|(v, _)| v.clone()),
            Some(vec![8])
        );
    }
}
