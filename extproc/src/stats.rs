//! The server's own counters, rendered next to the filter's metrics on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::EngineStats;
use crate::protocol::Events;

/// (name, type, help) of each series, in the order of `Counters::values`.
const SERIES: [(&str, &str, &str); 15] = [
    (
        "llm_router_extproc_streams_total",
        "counter",
        "ext_proc streams opened",
    ),
    (
        "llm_router_extproc_streams_active",
        "gauge",
        "ext_proc streams open now",
    ),
    (
        "llm_router_extproc_stream_errors_total",
        "counter",
        "streams ended by a gRPC or engine error",
    ),
    (
        "llm_router_extproc_local_replies_total",
        "counter",
        "streams answered with an immediate_response by the filter",
    ),
    (
        "llm_router_extproc_traps_total",
        "counter",
        "streams whose VM trapped",
    ),
    (
        "llm_router_extproc_endpoints_picked_total",
        "counter",
        "requests sent on with a picked endpoint",
    ),
    (
        "llm_router_extproc_subset_rejections_total",
        "counter",
        "503s: picked endpoint outside the gateway's subset hint",
    ),
    (
        "llm_router_extproc_lost_body_rewrites_total",
        "counter",
        "body rewrites that the gateway's body mode could not carry",
    ),
    (
        "llm_router_extproc_config_reloads_total",
        "counter",
        "plugin configuration reloads applied",
    ),
    (
        "llm_router_extproc_config_reload_failures_total",
        "counter",
        "plugin configuration reloads refused (old config kept)",
    ),
    (
        "llm_router_extproc_push_requests_total",
        "counter",
        "requests to the filter's push path",
    ),
    (
        "llm_router_extproc_engine_streams_total",
        "counter",
        "streams the engine opened",
    ),
    (
        "llm_router_extproc_vm_traps_total",
        "counter",
        "VM traps in the engine",
    ),
    (
        "llm_router_extproc_vm_reloads_total",
        "counter",
        "VMs recreated after a trap",
    ),
    (
        "llm_router_extproc_engine_config_reload_failures_total",
        "counter",
        "configurations the engine refused",
    ),
];

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
        let mut out = String::new();
        for ((name, kind, help), value) in SERIES.iter().zip(self.values(engine)) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }

    fn values(&self, engine: &EngineStats) -> [u64; 15] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            get(&self.streams),
            get(&self.streams_active),
            get(&self.stream_errors),
            get(&self.local_replies),
            get(&self.traps),
            get(&self.endpoints_picked),
            get(&self.subset_rejections),
            get(&self.lost_body_rewrites),
            get(&self.reloads),
            get(&self.reload_failures),
            get(&self.push_requests),
            engine.streams,
            engine.traps,
            engine.vm_reloads,
            engine.config_reload_failures,
        ]
    }
}
