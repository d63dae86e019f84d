//! Proxy-Wasm contexts: the only code that talks to the host. Callbacks read host state, call
//! the pure logic (`plan`, `ratelimit`, `usage`, `metrics`) and apply the result. Every host
//! call's `Status` is handled: the SDK's trait helpers panic on errors (a trap kills the VM for
//! every request on that worker), so `hostcalls` is used directly (see `host`).

mod host;
mod picker;
mod stats;

use crate::body::InvalidBody;
use crate::config::{Config, TenantSource};
use crate::metrics::{self, Catalog, Metric};
use crate::plan::{self, Forward, Plan};
use crate::ratelimit::{self, Gate, Outcome};
use crate::reply::LocalReply;
use crate::usage::{self, SseScanner, Usage};
use host::{
    clear_route_cache, now_ms, property_string, request_body, request_headers, response_body,
    response_header, send_reply, set_request_header, set_response_header, SharedData,
};
use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};
use stats::Stats;
use std::rc::Rc;

/// Largest non-streaming response body kept to read its `usage` (it is copied as it passes,
/// never held back).
const MAX_JSON_RESPONSE: usize = 4 * 1024 * 1024;

/// What the contexts of one VM share: the configuration and its metrics.
struct Shared {
    cfg: Config,
    stats: Stats,
    /// Bearer token the load sidecar must present (from the environment).
    push_token: Option<String>,
    snapshots: picker::SnapshotCache,
}

/// Largest load snapshot accepted from the sidecar.
const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;

/// One per VM (worker thread).
#[derive(Default)]
pub struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(status) => {
                error!("llm-router: cannot read the plugin configuration: {status:?}");
                return false;
            }
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
                self.shared = Some(Rc::new(Shared {
                    cfg,
                    stats,
                    push_token,
                    snapshots: picker::SnapshotCache::default(),
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
    /// Rate-limit charge to reconcile: tenant and tokens charged.
    charge: Option<(ratelimit::Tenant, u64)>,
    limits_status: Option<ratelimit::Status>,
    /// In-flight count to release at the end (an endpoint was picked).
    ticket: Option<picker::Ticket>,
}

enum ResponseScan {
    None,
    Sse(SseScanner),
    Json(Vec<u8>),
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
        }
    }

    fn reply(&mut self, reply: &LocalReply) -> Action {
        self.local_reply = true;
        send_reply(reply);
        Action::Pause
    }

    /// Decides with the body (or why there is none usable) and applies the decision.
    /// `body_size` is the size of the body buffer the host holds now (for a body refused as
    /// too large from its content-length, that declared length).
    fn decide(
        &mut self,
        sh: &Shared,
        body: Result<&[u8], InvalidBody>,
        body_size: usize,
    ) -> Action {
        self.inspecting = false;
        let headers = std::mem::take(&mut self.headers);
        let mut fwd = match plan::plan(
            &sh.cfg,
            &self.path,
            &headers,
            body,
            body_size as u64,
            random_u64(),
        ) {
            Plan::Reject(why, reply) => {
                sh.stats
                    .inc(Metric::InvalidBody, &[metrics::invalid_reason(why)]);
                // Counted in llm_router_requests_total{status="local"} under the default tier
                // (no tier was chosen), so error ratios see rejected bodies too.
                let tier = sh.cfg.default_tier;
                let model = sh.cfg.tiers.get(tier).and_then(|t| t.model.as_deref());
                self.routed = Some(Routed::new(sh, tier, model, None, false));
                return self.reply(&reply);
            }
            Plan::Forward(fwd) => fwd,
        };
        if let Some(why) = fwd.invalid {
            sh.stats
                .inc(Metric::InvalidBody, &[metrics::invalid_reason(why)]);
        }
        let mut routed = Routed::new(
            sh,
            fwd.tier,
            fwd.model.as_deref(),
            fwd.prompt_tokens,
            fwd.stream,
        );
        let refusal = charge_tenant(sh, &headers, &fwd, &mut routed)
            .or_else(|| pick_endpoint(sh, &headers, &mut fwd, &mut routed));
        let (tier, model) = (routed.tier, routed.model);
        self.routed = Some(routed);
        if let Some(reply) = refusal {
            return self.reply(&reply);
        }

        sh.stats.inc(
            Metric::ModelSelected,
            &[tier, model, metrics::select_reason(fwd.reason)],
        );
        if let Some(p) = fwd.prompt_tokens {
            sh.stats.record(Metric::PromptTokensEstimated, &[tier], p);
        }
        apply_forward(&fwd, body_size);
        Action::Continue
    }

    /// Everything that happens once per request at its end: reconcile the token charge with
    /// real usage and count the request.
    fn finish(&mut self, sh: &Shared) {
        let Some(mut routed) = self.routed.take() else {
            return;
        };
        if let Some(ticket) = routed.ticket.take() {
            ticket.release();
        }
        let usage: Option<Usage> = match &self.response {
            ResponseScan::Sse(s) => s.usage,
            ResponseScan::Json(body) if self.response_ended => usage::json_usage(body),
            _ => None,
        };
        let ok = self.status_code.is_some_and(|c| (200..300).contains(&c));
        let status = match (self.local_reply, self.status_code) {
            (true, _) => metrics::STATUS_LOCAL,
            (false, Some(code)) => metrics::status_class(code),
            (false, None) => metrics::STATUS_CANCELLED,
        };

        if let Some((tenant, charged)) = &routed.charge {
            let outcome = match (&self.response, ok && !self.local_reply) {
                (ResponseScan::Sse(s), true) if !s.done && !self.response_ended => {
                    Outcome::StreamCut {
                        prompt_estimate: routed.prompt_estimate.unwrap_or(0),
                        events: s.events,
                    }
                }
                (_, true) => Outcome::Success,
                (_, false) => Outcome::Failed,
            };
            let delta = ratelimit::reconcile_delta(*charged, usage.map(|u| u.total()), outcome);
            if delta != 0 {
                if let Err(e) =
                    ratelimit::adjust(&SharedData, &tenant.key, &tenant.limits, 0, delta, now_ms())
                {
                    warn!(
                        "llm-router: cannot reconcile tokens of {}: {e:?}",
                        tenant.label
                    );
                }
            }
        }

        sh.stats
            .inc(Metric::Requests, &[routed.tier, routed.model, status]);
        if !self.local_reply {
            let elapsed = now_ms().saturating_sub(self.start_ms);
            sh.stats
                .record(Metric::RequestDuration, &[routed.model], elapsed);
        }
        let prompt =
            usage
                .map(|u| u.prompt_tokens)
                .or(if ok { routed.prompt_estimate } else { None });
        if let Some(p) = prompt {
            sh.stats
                .add(Metric::Tokens, &[routed.model, metrics::TOKEN_PROMPT], p);
        }
        if let Some(u) = usage {
            sh.stats.add(
                Metric::Tokens,
                &[routed.model, metrics::TOKEN_COMPLETION],
                u.completion_tokens,
            );
        }
    }
}

impl Http {
    /// A load push from the sidecar: the filter answers it itself, it never goes upstream.
    fn push_headers(
        &mut self,
        sh: &Shared,
        headers: &plan::Headers,
        method: &str,
        end_of_stream: bool,
    ) -> Action {
        if method != "POST" {
            let reply = LocalReply::error(
                405,
                "invalid_request_error",
                "method_not_allowed",
                "Load snapshots are pushed with POST.",
            )
            .with_header("allow", "POST".to_string());
            return self.reply(&reply);
        }
        let source = property_string(&["source".to_string(), "address".to_string()]);
        let auth = plan::header(headers, "authorization");
        if let Err(why) =
            crate::endpoints::authorize(source.as_deref(), auth, sh.push_token.as_deref())
        {
            warn!("llm-router: load push refused ({why:?}) from {source:?}");
            let reply = LocalReply::error(
                403,
                "permission_error",
                "forbidden",
                "Load pushes need the configured token and a loopback source.",
            );
            return self.reply(&reply);
        }
        if end_of_stream {
            return self.push_body(0, true);
        }
        self.push = true;
        Action::Pause
    }

    fn push_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if body_size > MAX_SNAPSHOT_BYTES {
            self.push = false;
            let reply = LocalReply::error(
                413,
                "invalid_request_error",
                "request_too_large",
                "The load snapshot is too large.",
            );
            return self.reply(&reply);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.push = false;
        let body = request_body(body_size);
        let reply = match crate::endpoints::Snapshot::parse(&body) {
            Err(why) => LocalReply::error(400, "invalid_request_error", "invalid_snapshot", &why),
            Ok(_) => match picker::store_snapshot(&body, now_ms()) {
                Ok(()) => LocalReply {
                    status: 204,
                    headers: Vec::new(),
                    body: Vec::new(),
                    code: "",
                },
                Err(e) => {
                    warn!("llm-router: cannot store the load snapshot: {e:?}");
                    LocalReply::error(503, "server_error", "unavailable", "Snapshot not stored.")
                }
            },
        };
        self.reply(&reply)
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

/// Charges the request to its tenant's buckets (when tenants are configured). Returns the
/// reply when the tenant is refused (429, or 401 for an unknown tenant under `reject`).
fn charge_tenant(
    sh: &Shared,
    headers: &plan::Headers,
    fwd: &Forward,
    routed: &mut Routed,
) -> Option<LocalReply> {
    let tenants = sh.cfg.tenants.as_ref()?;
    let id = match &tenants.source {
        TenantSource::Header(name) => plan::header(headers, name).map(str::to_string),
        source => ratelimit::jwt_claim_path(source).and_then(|p| property_string(&p)),
    };
    let cost = ratelimit::token_cost(tenants, fwd.prompt_tokens, fwd.max_tokens);
    match ratelimit::gate(tenants, id.as_deref(), cost, &SharedData, now_ms()) {
        Gate::Pass {
            tenant,
            charged_tokens,
            status,
        } => {
            routed.charge = Some((tenant, charged_tokens));
            routed.limits_status = Some(status);
            None
        }
        Gate::Refuse {
            reply,
            tenant_label,
            bucket,
        } => {
            if let Some(b) = bucket {
                let t = sh.stats.catalog().tenant(&tenant_label);
                sh.stats.inc(Metric::RateLimited, &[t, b.label()]);
            }
            Some(reply)
        }
        Gate::Degraded(why) => {
            warn!("llm-router: rate limit state unavailable, admitting: {why}");
            None
        }
    }
}

/// Names the least-loaded endpoint of the tier's pool (when endpoints are configured) in
/// `headers.endpoint`. Returns the reply when a sheddable request meets a saturated pool.
fn pick_endpoint(
    sh: &Shared,
    headers: &plan::Headers,
    fwd: &mut Forward,
    routed: &mut Routed,
) -> Option<LocalReply> {
    let ep_cfg = sh.cfg.endpoints.as_ref()?;
    let pool = sh.cfg.tiers.get(fwd.tier).map_or("", |t| t.name.as_str());
    let asked = ep_cfg
        .criticality_header
        .as_deref()
        .and_then(|h| plan::header(headers, h));
    let crit = crate::endpoints::criticality(fwd.criticality, asked);
    match sh
        .snapshots
        .pick(ep_cfg, pool, crit, now_ms(), random_u64())
    {
        picker::Outcome::Picked { address, ticket } => {
            let label = sh.stats.endpoint_label(&address);
            sh.stats.inc(Metric::EndpointPicked, &[routed.tier, label]);
            fwd.set_headers
                .push((sh.cfg.headers.endpoint.clone(), address));
            routed.ticket = Some(ticket);
            None
        }
        picker::Outcome::Shed => {
            sh.stats.inc(Metric::Shed, &[routed.model]);
            let reply = LocalReply::error(
                429,
                "server_error",
                "overloaded",
                "Every model server for this request is at capacity; retry shortly.",
            )
            .with_header("retry-after", "1".to_string());
            Some(reply)
        }
        picker::Outcome::Fallback(why) => {
            sh.stats
                .inc(Metric::EndpointFallback, &[routed.tier, why as u16]);
            None
        }
    }
}

/// Sets the routing headers and the rewritten body, and has Envoy match the route again.
fn apply_forward(fwd: &Forward, body_size: usize) {
    for (name, value) in &fwd.set_headers {
        set_request_header(name, Some(value));
    }
    if let Some(new_body) = &fwd.body {
        match hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, new_body) {
            // The length changed: Envoy frames the body anew without it.
            Ok(()) => set_request_header("content-length", None),
            Err(status) => warn!("llm-router: cannot rewrite the body: {status:?}"),
        }
    }
    clear_route_cache();
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(sh) = self.shared.clone() else {
            return Action::Continue;
        };
        // A client never chooses its own tier, model, endpoint or token count.
        for name in sh.cfg.headers.owned() {
            set_request_header(name, None);
        }
        let headers = request_headers();
        let method = plan::header(&headers, ":method").unwrap_or_default();
        let path = plan::header(&headers, ":path").unwrap_or_default();
        if let Some(ep) = &sh.cfg.endpoints {
            if crate::path::normalize(path.as_bytes()) == ep.push_path {
                return self.push_headers(&sh, &headers, method, end_of_stream);
            }
        }
        if method != "POST" || !sh.cfg.is_api_path(path) {
            return Action::Continue;
        }
        self.path = crate::path::normalize(path.as_bytes());
        self.start_ms = now_ms();
        let declared = plan::header(&headers, "content-length").and_then(|v| v.parse::<u64>().ok());
        self.headers = headers;
        if end_of_stream {
            return self.decide(&sh, Ok(&[]), 0);
        }
        if let Some(len) = declared.filter(|&len| len > sh.cfg.max_body_bytes as u64) {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            return self.decide(&sh, Err(InvalidBody::TooLarge), len);
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
        if !self.inspecting {
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
        let Some(routed) = &self.routed else {
            return Action::Continue;
        };
        self.status_code = response_header(":status").and_then(|s| s.parse().ok());
        if self.local_reply {
            return Action::Continue;
        }
        if let Some(status) = &routed.limits_status {
            for (name, value) in ratelimit::headers(status) {
                set_response_header(name, &value);
            }
        }
        let content_type = response_header("content-type").unwrap_or_default();
        self.response = if content_type.starts_with("text/event-stream") {
            ResponseScan::Sse(SseScanner::default())
        } else if routed.stream {
            ResponseScan::None
        } else {
            ResponseScan::Json(Vec::new())
        };
        self.response_ended = end_of_stream;
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.routed.is_none() || self.local_reply {
            return Action::Continue;
        }
        self.response_ended = end_of_stream;
        match &mut self.response {
            ResponseScan::None => {}
            ResponseScan::Sse(scanner) => {
                // The chunk is read, never held: the stream flows at the upstream's pace.
                let chunk = response_body(body_size);
                if scanner.feed(&chunk) {
                    if let (Some(sh), Some(r)) = (&self.shared, &self.routed) {
                        let ttft = now_ms().saturating_sub(self.start_ms);
                        sh.stats.record(Metric::TimeToFirstToken, &[r.model], ttft);
                    }
                }
            }
            ResponseScan::Json(kept) => {
                if kept.len() + body_size > MAX_JSON_RESPONSE {
                    self.response = ResponseScan::None;
                } else {
                    kept.extend_from_slice(&response_body(body_size));
                }
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(sh) = self.shared.clone() {
            self.finish(&sh);
        }
    }
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or(0)
}
