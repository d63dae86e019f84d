//! The server's own counters, rendered next to the filter's metrics on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::EngineStats;
use crate::protocol::Events;

#[derive(Debug, Default)]
pub struct Counters {
    pub streams: AtomicU64,
    pub streams_active: AtomicU64,
    pub stream_errors: AtomicU64,
    pub local_replies: AtomicU64,
    pub traps: AtomicU64,
    pub endpoints_picked: AtomicU64,
    pub subset_rejections: AtomicU64,
    pub lost_body_rewrites: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub push_requests: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn inc(&self, pick: impl Fn(&Counters) -> &AtomicU64) {
        bump(pick(self));
    }

    /// Counts what one finished stream did.
    pub fn record(&self, events: &Events) {
        if events.local_reply.is_some() {
            bump(&self.local_replies);
        }
        if events.trapped {
            bump(&self.traps);
        }
        if events.picked_endpoint.is_some() {
            bump(&self.endpoints_picked);
        }
        if events.subset_rejected {
            bump(&self.subset_rejections);
        }
        if events.lost_body_rewrite {
            bump(&self.lost_body_rewrites);
        }
    }

    /// Prometheus text for the server's counters and the engine's.
    pub fn render(&self, engine: &EngineStats) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 15] = [
            (
                "llm_router_extproc_streams_total",
                "counter",
                "ext_proc streams opened",
                get(&self.streams),
            ),
            (
                "llm_router_extproc_streams_active",
                "gauge",
                "ext_proc streams open now",
                get(&self.streams_active),
            ),
            (
                "llm_router_extproc_stream_errors_total",
                "counter",
                "streams ended by a gRPC or engine error",
                get(&self.stream_errors),
            ),
            (
                "llm_router_extproc_local_replies_total",
                "counter",
                "streams answered with an immediate_response by the filter",
                get(&self.local_replies),
            ),
            (
                "llm_router_extproc_traps_total",
                "counter",
                "streams whose VM trapped",
                get(&self.traps),
            ),
            (
                "llm_router_extproc_endpoints_picked_total",
                "counter",
                "requests sent on with a picked endpoint",
                get(&self.endpoints_picked),
            ),
            (
                "llm_router_extproc_subset_rejections_total",
                "counter",
                "503s: picked endpoint outside the gateway's subset hint",
                get(&self.subset_rejections),
            ),
            (
                "llm_router_extproc_lost_body_rewrites_total",
                "counter",
                "body rewrites that the gateway's body mode could not carry",
                get(&self.lost_body_rewrites),
            ),
            (
                "llm_router_extproc_config_reloads_total",
                "counter",
                "plugin configuration reloads applied",
                get(&self.reloads),
            ),
            (
                "llm_router_extproc_config_reload_failures_total",
                "counter",
                "plugin configuration reloads refused (old config kept)",
                get(&self.reload_failures),
            ),
            (
                "llm_router_extproc_push_requests_total",
                "counter",
                "requests to the filter's push path",
                get(&self.push_requests),
            ),
            (
                "llm_router_extproc_engine_streams_total",
                "counter",
                "streams the engine opened",
                engine.streams,
            ),
            (
                "llm_router_extproc_vm_traps_total",
                "counter",
                "VM traps in the engine",
                engine.traps,
            ),
            (
                "llm_router_extproc_vm_reloads_total",
                "counter",
                "VMs recreated after a trap",
                engine.vm_reloads,
            ),
            (
                "llm_router_extproc_engine_config_reload_failures_total",
                "counter",
                "configurations the engine refused",
                engine.config_reload_failures,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}
