//! Proxy-Wasm contexts: the only code that talks to the host. Callbacks read host state, call
//! the pure logic (`plan`, `ratelimit`, `usage`, `metrics`) and apply the result. Every host
//! call's `Status` is handled: the SDK's trait helpers panic on errors (a trap kills the VM for
//! every request on that worker), so `hostcalls` is used directly (see `host`).

mod abi;
mod global;
mod host;
mod picker;
mod request;
mod response;
mod stats;

use crate::body::InvalidBody;
use crate::config::Config;
use crate::metrics::Catalog;
use crate::plan;
use crate::ratelimit::{self, Charge};
use crate::splitmix::SplitMix64;
use host::{now_ms, plugin_configuration, request_body, request_headers, set_request_header};
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use response::ResponseScan;
use stats::Stats;
use std::rc::Rc;

pub use abi::init_logging;

/// What the contexts of one VM share: the configuration and its metrics.
struct Shared {
    cfg: Config,
    stats: Stats,
    /// Bearer token the load sidecar must present (from the environment).
    push_token: Option<String>,
    snapshots: picker::SnapshotCache,
    /// The host may give a subset hint per request (`endpoints::SUBSET_HINTS_ENV` is set).
    subset_hints: bool,
}

/// One per VM (worker thread).
#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
    /// Global limits: the quota service calls of the background tick.
    background: global::Background,
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.job_answered(token_id, status_code, response_size);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = plugin_configuration() else {
            return false;
        };
        match Config::parse(&bytes) {
            Ok(cfg) => {
                info!(
                    "llm-router: configured: {} tiers, {} rules, {} model splits, tenants {}",
                    cfg.tiers.len(),
                    cfg.rules.len(),
                    cfg.models.len(),
                    if cfg.tenants.is_some() { "on" } else { "off" },
                );
                let stats = Stats::new(Catalog::from_config(&cfg));
                // Only global limits run on ticks (leases are refilled in the background).
                if let Some(g) = cfg.tenants.as_ref().and_then(|t| t.global.as_ref()) {
                    let period = u32::try_from(g.refill_interval_ms).unwrap_or(u32::MAX);
                    if let Err(status) = abi::set_tick_period_ms(period) {
                        error!("llm-router: cannot set the tick period: {status:?}");
                    }
                }
                let push_token = cfg.endpoints.as_ref().and_then(|e| {
                    let token = std::env::var(&e.push_token_env).ok().filter(|t| !t.is_empty());
                    if token.is_none() {
                        warn!(
                            "llm-router: endpoints: environment variable {} is not set: load pushes will be refused",
                            e.push_token_env
                        );
                    }
                    token
                });
                let subset_hints =
                    std::env::var_os(crate::endpoints::SUBSET_HINTS_ENV).is_some_and(|v| v == "1");
                self.shared = Some(Rc::new(Shared {
                    cfg,
                    stats,
                    push_token,
                    snapshots: picker::SnapshotCache::default(),
                    subset_hints,
                }));
                true
            }
            Err(e) => {
                // One line naming the field; a previous configuration (if any) stays.
                error!("llm-router: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.tick();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    // The SDK traps when this returns None: always hand out a context (one without a
    // configuration passes requests through).
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(self.shared.clone())))
    }
}

/// What is known about an inspected request once it was decided.
struct Routed {
    tier: u16,
    model: u16,
    prompt_estimate: Option<u64>,
    stream: bool,
    /// Rate-limit charge to reconcile: the tenant, what it was charged, and where.
    charge: Option<(ratelimit::Tenant, Charge, ratelimit::Booked)>,
    limits_status: Option<ratelimit::Status>,
    /// In-flight count to release at the end (an endpoint was picked).
    ticket: Option<picker::Ticket>,
}

/// One per HTTP request.
pub struct Http {
    shared: Option<Rc<Shared>>,
    /// Headers are held and the body is being collected.
    inspecting: bool,
    path: String,
    /// Request headers as read in the headers callback (spoofed routing headers already
    /// removed), kept for the decision so the host map is read once per request.
    headers: Vec<(String, String)>,
    start_ms: u64,
    routed: Option<Routed>,
    /// The filter answered this request itself.
    local_reply: bool,
    status_code: Option<u32>,
    response: ResponseScan,
    response_ended: bool,
    /// This request is a load push from the sidecar (answered by the filter).
    push: bool,
    /// Request body bytes buffered when the decision was made, and seen pass after it (an
    /// unreadable body is charged by its bytes, to its end).
    body_at_decision: u64,
    body_after_decision: u64,
    /// `content-length` of a body decided too large from its headers alone.
    body_declared: u64,
    /// Global limits: the request waits for the quota service.
    waiting: Option<global::Waiting>,
}

impl Http {
    fn new(shared: Option<Rc<Shared>>) -> Self {
        Http {
            shared,
            inspecting: false,
            path: String::new(),
            headers: Vec::new(),
            start_ms: 0,
            routed: None,
            local_reply: false,
            status_code: None,
            response: ResponseScan::None,
            response_ended: false,
            push: false,
            body_at_decision: 0,
            body_after_decision: 0,
            body_declared: 0,
            waiting: None,
        }
    }
}

impl Routed {
    fn new(
        sh: &Shared,
        tier: usize,
        model: Option<&str>,
        prompt_estimate: Option<u64>,
        stream: bool,
    ) -> Routed {
        Routed {
            tier: u16::try_from(tier).unwrap_or(u16::MAX),
            model: sh.stats.catalog().model(model),
            prompt_estimate,
            stream,
            charge: None,
            limits_status: None,
            ticket: None,
        }
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.take_answered(token_id, status_code, response_size);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(sh) = self.shared.clone() else {
            return Action::Continue;
        };
        // A client never chooses its own tier, model, endpoint or token count: the headers the
        // filter owns are removed (from the host's map only when the client sent them: one
        // read of the map instead of a removal call per name).
        let mut headers = request_headers();
        let owned = sh.cfg.headers.owned();
        let spoofed = |k: &str| owned.iter().any(|o| k.eq_ignore_ascii_case(o));
        if headers.iter().any(|(k, _)| spoofed(k)) {
            for name in owned {
                if plan::header(&headers, name).is_some() {
                    set_request_header(name, None);
                }
            }
            headers.retain(|(k, _)| !spoofed(k));
        }
        let method = plan::header(&headers, ":method").unwrap_or_default();
        let raw_path = plan::header(&headers, ":path").unwrap_or_default();
        // Matched as the upstream will read it: decoded, `//`, `.` and `..` resolved.
        let path = crate::path::normalize(raw_path.as_bytes());
        if let Some(ep) = &sh.cfg.endpoints {
            if path == ep.push_path {
                return self.push_headers(&sh, &headers, method, end_of_stream);
            }
        }
        if method != "POST" || !sh.cfg.is_api_path(raw_path) {
            return Action::Continue;
        }
        self.path = path;
        self.start_ms = now_ms();
        let declared =
            plan::header(&headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        self.headers = headers;
        if end_of_stream {
            return self.decide(&sh, Ok(&[]), 0);
        }
        if let Some(len) = declared.filter(|&len| len > sh.cfg.max_body_bytes as u64) {
            // Charged by its declared length; counted again as it passes.
            self.body_declared = len;
            return self.decide(&sh, Err(InvalidBody::TooLarge), 0);
        }
        // Hold the headers until the whole body is here (needs the filter option
        // `allow_on_headers_stop_iteration: true` in Envoy).
        self.inspecting = true;
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.push {
            return self.push_body(body_size, end_of_stream);
        }
        if self.waiting.is_some() {
            // Decided, waiting for the quota service: held (Envoy buffers what arrives, and
            // each call sees the whole buffer); counted past what the decision saw.
            let more = (body_size as u64).saturating_sub(self.body_at_decision);
            self.body_after_decision = self.body_after_decision.max(more);
            return Action::Pause;
        }
        if !self.inspecting {
            if self.routed.is_some() {
                // Decided already: the rest of the body streams through, chunk by chunk.
                self.body_after_decision =
                    self.body_after_decision.saturating_add(body_size as u64);
            }
            return Action::Continue;
        }
        let Some(sh) = self.shared.clone() else {
            return Action::Continue;
        };
        if body_size > sh.cfg.max_body_bytes {
            // Decide now without reading it; the rest streams through.
            return self.decide(&sh, Err(InvalidBody::TooLarge), body_size);
        }
        if !end_of_stream {
            return Action::Pause; // Envoy buffers; the next call sees the whole body so far.
        }
        let body = request_body(body_size);
        self.decide(&sh, Ok(&body), body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.waiting.is_some() {
            return Action::Pause;
        }
        if !self.inspecting {
            return Action::Continue;
        }
        let Some(sh) = self.shared.clone() else {
            return Action::Continue;
        };
        // A body ended by trailers: decide on what was buffered.
        let body = request_body(sh.cfg.max_body_bytes.saturating_add(1));
        if body.len() > sh.cfg.max_body_bytes {
            return self.decide(&sh, Err(InvalidBody::TooLarge), body.len());
        }
        let size = body.len();
        self.decide(&sh, Ok(&body), size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.response_headers(end_of_stream);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.response_chunk(body_size, end_of_stream);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.abandon_take();
        if let Some(sh) = self.shared.clone() {
            self.finish(&sh);
        }
    }
}

std::thread_local! {
    /// The VM's random stream, seeded from the host's `random_get` by the first request, not at
    /// VM start (a host that cloned a started VM would give every copy the same stream).
    /// Weighted splits and endpoint tie-breaks need uniform numbers, not secrets, and a request
    /// then spends no host call on them.
    static RANDOM: std::cell::Cell<Option<SplitMix64>> = const { std::cell::Cell::new(None) };
}

fn random_u64() -> u64 {
    RANDOM.with(|cell| {
        let mut g = cell
            .get()
            .unwrap_or_else(|| SplitMix64::new(getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15)));
        let n = g.next_u64();
        cell.set(Some(g));
        n
    })
}
