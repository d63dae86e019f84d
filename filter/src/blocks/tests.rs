#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::testutil::{iters, Rng};

struct Live {
    ptr: *mut u8,
    layout: Layout,
    fill: u8,
}

fn check(b: &Live) {
    // SAFETY: `b` is live: allocated by the test with `b.layout` and filled with `b.fill`.
    let bytes = unsafe { std::slice::from_raw_parts(b.ptr, b.layout.size()) };
    assert!(
        bytes.iter().all(|&x| x == b.fill),
        "a live block of {} bytes was overwritten",
        b.layout.size()
    );
}

fn fill(b: &Live) {
    // SAFETY: as in `check`.
    unsafe { ptr::write_bytes(b.ptr, b.fill, b.layout.size()) };
}

fn random_layout(rng: &mut Rng) -> Layout {
    let size = match rng.below(10) {
        0 => rng.below(4096) + 1,
        1 => 512 + rng.below(64),
        _ => rng.below(600) + 1,
    };
    let align = [1, 2, 4, 8, 16, 32, 64][rng.below(7)];
    Layout::from_size_align(size, align).unwrap()
}

/// Random allocations, frees and reallocations of every class and of the system's sizes:
/// no live block is ever overwritten by another (each is filled and checked), every pointer
/// is aligned as asked, and reallocation keeps the contents.
#[test]
fn live_blocks_never_overlap_and_keep_their_contents() {
    let a = SmallBlocks::new();
    let mut rng = Rng::new(7);
    let mut live: Vec<Live> = Vec::new();
    for round in 0..iters(20_000) {
        let fill_byte = (round % 251) as u8;
        match rng.below(3) {
            0 if !live.is_empty() => {
                let b = live.swap_remove(rng.below(live.len()));
                check(&b);
                // SAFETY: allocated by `a` with this layout, freed once.
                unsafe { a.dealloc(b.ptr, b.layout) };
            }
            1 if !live.is_empty() => {
                let i = rng.below(live.len());
                let old = &live[i];
                check(old);
                let new_size = random_layout(&mut rng).size();
                // SAFETY: allocated by `a` with this layout; the new size is non-zero.
                let p = unsafe { a.realloc(old.ptr, old.layout, new_size) };
                assert!(!p.is_null());
                let kept = old.layout.size().min(new_size);
                // SAFETY: the new block holds `new_size >= kept` bytes.
                let bytes = unsafe { std::slice::from_raw_parts(p, kept) };
                assert!(bytes.iter().all(|&x| x == old.fill), "realloc lost bytes");
                let layout = Layout::from_size_align(new_size, old.layout.align()).unwrap();
                live[i] = Live {
                    ptr: p,
                    layout,
                    fill: fill_byte,
                };
                fill(&live[i]);
            }
            _ => {
                let layout = random_layout(&mut rng);
                // SAFETY: a non-zero size.
                let p = unsafe { a.alloc(layout) };
                assert!(!p.is_null());
                assert_eq!(p as usize % layout.align(), 0, "misaligned for {layout:?}");
                let b = Live {
                    ptr: p,
                    layout,
                    fill: fill_byte,
                };
                fill(&b);
                live.push(b);
            }
        }
        if round % 997 == 0 {
            live.iter().for_each(check);
        }
    }
    for b in live {
        check(&b);
        // SAFETY: allocated by `a` with this layout, freed once.
        unsafe { a.dealloc(b.ptr, b.layout) };
    }
}

#[test]
fn a_freed_block_is_handed_out_again_to_its_class() {
    let a = SmallBlocks::new();
    let small = Layout::from_size_align(20, 8).unwrap();
    // SAFETY: non-zero sizes; each block freed once with its layout.
    unsafe {
        let p = a.alloc(small);
        a.dealloc(p, small);
        let q = a.alloc(Layout::from_size_align(30, 4).unwrap());
        assert_eq!(p, q, "the 32-byte class reuses the freed block");
        a.dealloc(q, Layout::from_size_align(30, 4).unwrap());
    }
}

#[test]
fn classes_cover_sizes_up_to_512_with_the_block_alignment() {
    let l = |s, a| Layout::from_size_align(s, a).unwrap();
    assert_eq!(class_of(l(1, 1)), Some(0));
    assert_eq!(class_of(l(16, 16)), Some(0));
    assert_eq!(class_of(l(17, 1)), Some(1));
    assert_eq!(class_of(l(512, 8)), Some(5));
    assert_eq!(class_of(l(513, 8)), None);
    assert_eq!(
        class_of(l(8, 32)),
        None,
        "over-aligned goes to the system allocator"
    );
}

#[test]
fn the_class_is_the_smallest_block_that_holds_the_size() {
    for size in 0..=600usize {
        let l = Layout::from_size_align(size, 1).unwrap();
        let want = CLASSES.iter().position(|&c| size <= c);
        assert_eq!(class_of(l), want, "size {size}");
    }
}
