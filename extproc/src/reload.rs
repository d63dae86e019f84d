//! Plugin configuration reload: the file is read every second; when its bytes change the
//! engine is reconfigured. A configuration the engine refuses keeps the old one (logged,
//! counted in `llm_router_extproc_config_reload_failures_total`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::FilterEngine;
use crate::facts::ConfigFacts;
use crate::service::Shared;

/// Outcome of one look at the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Unchanged,
    Applied,
    Refused(String),
}

pub struct Watcher {
    path: PathBuf,
    last: Vec<u8>,
}

impl Watcher {
    /// `current`: the bytes the engine was started with.
    pub fn new(path: PathBuf, current: Vec<u8>) -> Self {
        Watcher {
            path,
            last: current,
        }
    }

    /// Looks at the file once; applies a changed configuration.
    pub async fn check<E: FilterEngine>(&mut self, shared: &Arc<Shared<E>>) -> Check {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) => {
                let why = format!("{}: {e}", self.path.display());
                return self.refused(shared, why, Vec::new());
            }
        };
        if bytes == self.last {
            return Check::Unchanged;
        }
        let engine_shared = shared.clone();
        let candidate = bytes.clone();
        let result =
            tokio::task::spawn_blocking(move || engine_shared.engine.reconfigure(candidate)).await;
        match result {
            Ok(Ok(())) => {
                shared.set_facts(ConfigFacts::from_config(&bytes));
                shared.counters.inc(|c| &c.reloads);
                log::info!("plugin configuration reloaded from {}", self.path.display());
                self.last = bytes;
                Check::Applied
            }
            Ok(Err(e)) => self.refused(shared, e.to_string(), bytes),
            Err(e) => self.refused(shared, e.to_string(), bytes),
        }
    }

    /// Counts and logs a refused configuration once per distinct content.
    fn refused<E: FilterEngine>(
        &mut self,
        shared: &Shared<E>,
        why: String,
        bytes: Vec<u8>,
    ) -> Check {
        if self.last != bytes {
            shared.counters.inc(|c| &c.reload_failures);
            log::error!(
                "plugin configuration {} refused, keeping the previous one: {why}",
                self.path.display()
            );
            self.last = bytes;
        }
        Check::Refused(why)
    }

    /// Checks every `period` until `shutdown`.
    pub async fn run<E: FilterEngine>(
        mut self,
        shared: Arc<Shared<E>>,
        period: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => { self.check(&shared).await; }
            }
        }
    }
}
