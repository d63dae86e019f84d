//! The module's allocator: small blocks recycled through free lists, in front of the system
//! allocator (dlmalloc in wasm32-wasip1).
//!
//! A request allocates and frees a few dozen small values (header names and values, keys of
//! shared data, label and property strings); dlmalloc spends about 400 wasm instructions on each
//! allocate-and-free pair, which made allocation a quarter of the filter's own time at 2 KB
//! (host-sim under `perf`). Here a block of up to 512 bytes goes back to the free list of its
//! size class when freed and is handed out again by the next allocation of that class: a
//! pop or a push. Larger or over-aligned layouts go to the system allocator unchanged.
//!
//! Blocks on the free lists are never returned to dlmalloc: the memory kept is the peak of
//! small blocks live at once (`make bench` part memory measures a worker VM: 2.1-2.8 MiB).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Block sizes; a layout takes the smallest class that holds it.
pub const CLASSES: [usize; 6] = [16, 32, 64, 128, 256, 512];
/// Every block is allocated with this alignment (and serves any layout aligned to at most it).
pub const BLOCK_ALIGN: usize = 16;

/// Free lists per class: each free block holds the address of the next one in its first
/// bytes.
pub struct SmallBlocks {
    free: UnsafeCell<[*mut u8; CLASSES.len()]>,
}

// SAFETY: registered as the global allocator only in wasm32 builds without threads
// (`target_feature = "atomics"` off), where one thread runs the module; native tests use
// their own instances from one thread each.
unsafe impl Sync for SmallBlocks {}

impl SmallBlocks {
    pub const fn new() -> SmallBlocks {
        SmallBlocks {
            free: UnsafeCell::new([ptr::null_mut(); CLASSES.len()]),
        }
    }
}

impl Default for SmallBlocks {
    fn default() -> SmallBlocks {
        SmallBlocks::new()
    }
}

/// The class of a layout (`None`: too large or over-aligned, the system allocator's).
pub fn class_of(layout: Layout) -> Option<usize> {
    if layout.align() > BLOCK_ALIGN || layout.size() > 512 {
        return None;
    }
    // Sizes 1..=16 -> 0, 17..=32 -> 1, ... 257..=512 -> 5 (CLASSES[i] = 16 << i).
    let bits = usize::BITS - (layout.size().max(16) - 1).leading_zeros();
    Some(bits as usize - 4)
}

fn block_layout(class: usize) -> Option<Layout> {
    let size = *CLASSES.get(class)?;
    Layout::from_size_align(size, BLOCK_ALIGN).ok()
}

// SAFETY: blocks handed out are `CLASSES[class]` bytes aligned to `BLOCK_ALIGN`, enough for
// every layout of that class; a block is on a free list only after its owner freed it, and it
// leaves the list before it is handed out again.
unsafe impl GlobalAlloc for SmallBlocks {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return System.alloc(layout);
        };
        let lists = &mut *self.free.get();
        let Some(head) = lists.get_mut(class) else {
            return ptr::null_mut();
        };
        if head.is_null() {
            return match block_layout(class) {
                Some(l) => System.alloc(l),
                None => ptr::null_mut(),
            };
        }
        let block = *head;
        // The next free block's address was written into this one when it was freed.
        *head = block.cast::<*mut u8>().read();
        block
    }

    #[inline(never)]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            System.dealloc(block, layout);
            return;
        };
        let lists = &mut *self.free.get();
        if let Some(head) = lists.get_mut(class) {
            block.cast::<*mut u8>().write(*head);
            *head = block;
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        match (class_of(layout), class_of(new_layout)) {
            // The block already holds the new size.
            (Some(a), Some(b)) if a == b => block,
            (None, None) => System.realloc(block, layout, new_size),
            _ => {
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests;
