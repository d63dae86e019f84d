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
