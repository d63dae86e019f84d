//! Request side: apply the plan's decision, charge the tenant, pick the endpoint, and answer
//! the sidecar's load pushes.

use super::host::{
    clear_route_cache, now_ms, property_string, publish, request_body, send_reply,
    set_request_body_prefix, set_request_header, SharedData,
};
use super::{abi, picker, random_u64, Http, Routed, Shared};
use crate::body::InvalidBody;
use crate::config::TenantSource;
use crate::metrics::{self, Metric};
use crate::plan::{self, Forward, Plan};
use crate::ratelimit::{self, global, Charge, Cost, Gate};
use crate::reply::LocalReply;
use crate::trace;
use log::{debug, warn};
use proxy_wasm::types::Action;

/// Where the ext_proc server puts the gateway's endpoint subset hint (`ip:port,...`).
pub const SUBSET_PROPERTY: [&str; 2] = ["llm_router", "endpoint_subset"];

/// Largest load snapshot accepted from the sidecar.
const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;

impl Http {
    pub(super) fn reply(&mut self, reply: &LocalReply) -> Action {
        self.local_reply = true;
        if let Some(sh) = &self.shared {
            publish(&sh.cfg, || trace::local_reply(reply));
        }
        send_reply(reply);
        Action::Pause
    }

    /// Decides with the body (or why there is none usable) and applies the decision.
    /// `body_size` is the size of the body buffer the host holds now.
    pub(super) fn decide(
        &mut self,
        sh: &Shared,
        body: Result<&[u8], InvalidBody>,
        body_size: usize,
    ) -> Action {
        self.inspecting = false;
        self.body_at_decision = body_size as u64;
        let headers = std::mem::take(&mut self.headers);
        // What the host holds may be more than the plan sees (a body decided too large).
        let known = (body_size as u64).max(self.body_declared);
        let roll = random_u64();
        let fwd = match plan::plan(&sh.cfg, &self.path, &headers, body, known, roll) {
            Plan::Reject(why, reply) => {
                publish(&sh.cfg, || trace::rejected(&self.path));
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
        publish(&sh.cfg, || trace::routed(&sh.cfg, &self.path, &fwd));
        let mut routed = Routed::new(
            sh,
            fwd.tier,
            fwd.model.as_deref(),
            fwd.prompt_tokens,
            fwd.stream,
        );
        let cost = Cost {
            prompt: fwd.prompt_tokens,
            body_bytes: fwd.body_bytes,
            max_tokens: fwd.max_tokens,
            n: fwd.n,
        };
        if sh.cfg.tenants.is_some() {
            // For Envoy's own `ratelimit` filter (`hits_addend`), before the request goes on.
            publish_tokens(PROMPT_TOKENS_PROPERTY, cost.prompt_tokens());
        }
        // One clock read for the whole decision (the charge and the endpoint pick), when
        // either needs it.
        let needs_clock = sh.cfg.tenants.is_some() || sh.cfg.endpoints.is_some();
        let now = if needs_clock { now_ms() } else { 0 };
        let charged = charge_tenant(sh, &headers, &cost, &mut routed, now);
        let parked = Parked {
            fwd,
            routed,
            headers,
            body_size,
            now,
        };
        match charged {
            Charged::Go => self.proceed(sh, parked),
            Charged::Refused(reply) => {
                self.routed = Some(parked.routed);
                self.reply(&reply)
            }
            Charged::Take(take) => self.wait_for_take(sh, take, parked),
        }
    }

    /// After admission: pick the endpoint, count, and apply the rewrite.
    pub(super) fn proceed(&mut self, sh: &Shared, parked: Parked) -> Action {
        let Parked {
            mut fwd,
            mut routed,
            headers,
            body_size,
            now,
        } = parked;
        let refusal = pick_endpoint(sh, &headers, &mut fwd, &mut routed, now);
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

    /// A load push from the sidecar: the filter answers it itself, it never goes upstream.
    pub(super) fn push_headers(
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
        let source = property_string(&["source", "address"]);
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

    pub(super) fn push_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
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

/// Property names of the token figures published for Envoy's `ratelimit` filter (read as
/// `%FILTER_STATE(wasm.llm_router.prompt_tokens:PLAIN)%`).
pub const PROMPT_TOKENS_PROPERTY: &str = trace::key::PROMPT_TOKENS;
pub const COMPLETION_TOKENS_PROPERTY: &str = trace::key::COMPLETION_TOKENS;

/// Publishes a token figure as a property of the stream (a host without filter state
/// refuses it quietly).
pub(super) fn publish_tokens(name: &str, value: u64) {
    if let Err(status) = abi::set_property(&[name], value.to_string().as_bytes()) {
        debug!("llm-router: cannot set property {name}: {status:?}");
    }
}

/// A request decided and waiting to go on (after a `Take`).
pub(super) struct Parked {
    pub fwd: Forward,
    pub routed: Routed,
    pub headers: Vec<(String, String)>,
    pub body_size: usize,
    /// The proxy's clock when the request was decided (or resumed), in ms.
    pub now: u64,
}

/// A `Take` a request waits for.
pub(super) struct PendingTake {
    pub tenant: ratelimit::Tenant,
    pub request: crate::quota::TakeRequest,
    pub tokens: u64,
    pub lacking: ratelimit::Bucket,
    pub cost: Cost,
}

/// What charging the tenant decided.
pub(super) enum Charged {
    /// Admitted (or no tenants configured): go on.
    Go,
    /// Refused (429, 401 for an unknown tenant under `reject`, 503 when the buckets cannot be
    /// charged: a request is never admitted uncharged).
    Refused(LocalReply),
    /// Global limits: the lease is empty; wait for the quota service.
    Take(PendingTake),
}

/// Charges the request to its tenant's buckets (when tenants are configured).
fn charge_tenant(
    sh: &Shared,
    headers: &plan::Headers,
    cost: &Cost,
    routed: &mut Routed,
    now: u64,
) -> Charged {
    let Some(tenants) = sh.cfg.tenants.as_ref() else {
        return Charged::Go;
    };
    let id = match &tenants.source {
        TenantSource::Header(name) => plan::header(headers, name).map(str::to_string),
        source => ratelimit::jwt_claim_path(source).and_then(|p| property_string(&p)),
    };
    let tokens = ratelimit::token_cost(tenants, cost);
    let gate = match &tenants.global {
        None => ratelimit::gate(tenants, id.as_deref(), tokens, &SharedData, now),
        Some(g) => {
            let d = global::gate(tenants, g, id.as_deref(), tokens, &SharedData, now);
            if d.fallback {
                let action = metrics::outage_action(g.on_outage);
                sh.stats.inc(Metric::GlobalFallback, &[action]);
            }
            d.gate
        }
    };
    apply_gate(sh, gate, cost, routed)
}

/// Applies the rate limiter's decision to the request's state.
pub(super) fn apply_gate(sh: &Shared, gate: Gate, cost: &Cost, routed: &mut Routed) -> Charged {
    let Some(tenants) = sh.cfg.tenants.as_ref() else {
        return Charged::Go;
    };
    match gate {
        Gate::Pass {
            tenant,
            charged_tokens,
            status,
            booked,
        } => {
            let charge = Charge {
                charged: charged_tokens,
                prompt: cost.prompt_tokens(),
                reserved: cost.reserved(tenants),
            };
            publish(&sh.cfg, || trace::tenant(&tenant.label));
            routed.charge = Some((tenant, charge, booked));
            routed.limits_status = Some(status);
            Charged::Go
        }
        Gate::Take {
            tenant,
            request,
            tokens,
            lacking,
        } => Charged::Take(PendingTake {
            tenant,
            request,
            tokens,
            lacking,
            cost: *cost,
        }),
        Gate::Refuse {
            reply,
            tenant_label,
            bucket,
        } => {
            publish(&sh.cfg, || trace::tenant(&tenant_label));
            if let Some(b) = bucket {
                let t = sh.stats.catalog().tenant(&tenant_label);
                sh.stats.inc(Metric::RateLimited, &[t, b.label()]);
            }
            Charged::Refused(reply)
        }
        Gate::Unavailable { reply, why } => {
            // An outage is logged once when it starts, not per request.
            if why != global::OUTAGE_WHY {
                warn!("llm-router: rate limit state unavailable, refusing: {why}");
            }
            Charged::Refused(reply)
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
    now: u64,
) -> Option<LocalReply> {
    let ep_cfg = sh.cfg.endpoints.as_ref()?;
    let pool = sh.cfg.tiers.get(fwd.tier).map_or("", |t| t.name.as_str());
    let asked = ep_cfg
        .criticality_header
        .as_deref()
        .and_then(|h| plan::header(headers, h));
    let crit = crate::endpoints::criticality(fwd.criticality, asked);
    // Behind ext_proc, the gateway may allow only some endpoints (the Inference Extension's
    // subset hint); the server hands it over as this property. Envoy in-proxy has none.
    let subset = sh
        .subset_hints
        .then(|| property_string(&SUBSET_PROPERTY))
        .flatten()
        .map(|s| crate::endpoints::parse_subset(&s));
    match sh.snapshots.pick(
        ep_cfg,
        pool,
        crit,
        subset.as_deref(),
        now,
        random_u64(),
        &fwd.prefix,
    ) {
        picker::Outcome::Picked {
            address,
            ticket,
            affinity,
        } => {
            let label = sh.stats.endpoint_label(&address);
            sh.stats.inc(Metric::EndpointPicked, &[routed.tier, label]);
            let mut reason = trace::ENDPOINT_PICKED;
            if let (Some(a), Some(p)) = (affinity, ep_cfg.prefix.as_ref()) {
                let tokens = crate::prefix::tokens_of(a.matched_blocks, p);
                sh.stats
                    .record(Metric::PrefixMatchTokens, &[routed.tier], tokens);
                if a.changed {
                    sh.stats.inc(Metric::PrefixAffinityChanged, &[routed.tier]);
                    reason = trace::ENDPOINT_PREFIX_AFFINITY;
                }
            }
            publish(&sh.cfg, || trace::endpoint(Some(&address), reason));
            fwd.set_headers
                .push((sh.cfg.headers.endpoint.clone(), address));
            routed.ticket = Some(ticket);
            None
        }
        picker::Outcome::Shed => {
            sh.stats.inc(Metric::Shed, &[routed.model]);
            publish(&sh.cfg, || trace::endpoint(None, trace::ENDPOINT_SHED));
            let reply = LocalReply::error(
                429,
                "server_error",
                "overloaded",
                "Every model server for this request is at capacity; retry shortly.",
            )
            .with_header("retry-after", "1".to_string());
            Some(reply)
        }
        picker::Outcome::NotInSubset => {
            publish(&sh.cfg, || {
                trace::endpoint(None, trace::ENDPOINT_NOT_IN_SUBSET)
            });
            Some(LocalReply::error(
                503,
                "server_error",
                "no_eligible_endpoint",
                "No model server the gateway allows for this request can take it.",
            ))
        }
        picker::Outcome::Fallback(why) => {
            let why = why as u16;
            sh.stats.inc(Metric::EndpointFallback, &[routed.tier, why]);
            let reason = metrics::FALLBACK_REASON.get(usize::from(why));
            publish(&sh.cfg, || {
                trace::endpoint(None, reason.copied().unwrap_or(metrics::OTHER))
            });
            None
        }
    }
}

/// Sets the routing headers and the rewritten body, and has Envoy match the route again.
fn apply_forward(fwd: &Forward, body_size: usize) {
    for (name, value) in &fwd.set_headers {
        set_request_header(name, Some(value));
    }
    if let Some(edit) = &fwd.body {
        if set_request_body_prefix(body_size, edit) {
            // The body was rewritten (its length may differ): Envoy frames it anew without it.
            set_request_header("content-length", None);
        }
    }
    clear_route_cache();
}
