//! What the engine handle, its streams and its worker threads share.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::step::Cmd;
use crate::state::SharedRef;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub streams: AtomicU64,
    pub traps: AtomicU64,
    pub vm_reloads: AtomicU64,
    pub config_reloads: AtomicU64,
    pub config_reload_failures: AtomicU64,
}

pub(super) struct Inner {
    pub senders: Vec<Sender<Cmd>>,
    pub threads: Mutex<Vec<JoinHandle<()>>>,
    pub shared: SharedRef,
    pub counters: Arc<Counters>,
    pub next_worker: AtomicUsize,
    pub next_stream: AtomicU64,
    pub fail_open: bool,
    /// Serializes `reconfigure` calls.
    pub config: Mutex<Vec<u8>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Shutdown ends the worker threads (no stream is left: streams hold Inner); gRPC answers
        // in flight may still hold senders, so closing the channels is not enough.
        for s in &self.senders {
            let _ = s.send(Cmd::Shutdown);
        }
        self.senders.clear();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}
