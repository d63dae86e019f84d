//! Envoy's rate-limit service (`envoy.service.ratelimit.v3.RateLimitService`) on the same
//! buckets as the Quota API.
//!
//! A descriptor is ours when its entries are exactly `llm_router_tenant` = tenant and
//! `llm_router_limit` = `requests` | `tokens` (in any order). Its hits (the descriptor's
//! `hits_addend`, else the request's, else 1) are taken from that tenant's bucket with
//! min = want = hits: all or nothing. `is_negative_hits` gives them back instead. Ours and
//! not fitting: OVER_LIMIT with `duration_until_reset` (when the hits would fit) and
//! `current_limit`. Descriptors that are not ours, and tenants without a limit on that bucket,
//! answer OK: not limited by us. A tenant name no bucket can have (empty, over 256 bytes, a
//! leading `}`) is OVER_LIMIT, never an RPC error a client could provoke. The descriptors of one tenant are taken in one script call
//! (atomically); different tenants' are separate calls, and one tenant's grant is not undone
//! when another's is over limit (as in Envoy's reference service). Redis down: UNAVAILABLE.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tonic::{Request, Response, Status};

use super::config::Limits;
use super::limits::{self, Invalid, Limit, Move, Take};
use super::service::Backend;
use super::stats::{Method, Outcome};

pub const TENANT_KEY: &str = "llm_router_tenant";
pub const LIMIT_KEY: &str = "llm_router_limit";
/// Most descriptors in one request.
const MAX_DESCRIPTORS: usize = 64;

/// What to do with one descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Not ours, or no limit configured: OK.
    Pass,
    Take(Take),
    Give(Move),
    /// A tenant name no bucket can have (empty, over 256 bytes, a leading `}`): OVER_LIMIT.
    /// The name comes from a client; an RPC error would let `failure_mode_deny: false` wave
    /// the request through unlimited.
    Refuse,
}

fn ours(d: &RateLimitDescriptor) -> Option<(&str, &str)> {
    let [a, b] = d.entries.as_slice() else {
        return None;
    };
    let (t, l) = if a.key == TENANT_KEY { (a, b) } else { (b, a) };
    (t.key == TENANT_KEY && l.key == LIMIT_KEY).then_some((t.value.as_str(), l.value.as_str()))
}

/// Decides what each descriptor of a request means (pure).
pub fn plan(request: &RateLimitRequest, limits: &Limits) -> Result<Vec<Plan>, Invalid> {
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return Err(Invalid(format!("descriptors: at most {MAX_DESCRIPTORS}")));
    }
    let request_hits = if request.hits_addend == 0 {
        1
    } else {
        u64::from(request.hits_addend)
    };
    request
        .descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let Some((tenant, limit_name)) = ours(d) else {
                return Ok(Plan::Pass);
            };
            let at = format!("descriptors[{i}]");
            let Some(limit) = Limit::parse(limit_name) else {
                return Err(Invalid(format!(
                    "{at}.{LIMIT_KEY}: must be `requests` or `tokens`"
                )));
            };
            let Some(rate) = limits.of(tenant).get(limit) else {
                return Ok(Plan::Pass);
            };
            let hits = d.hits_addend.as_ref().map_or(request_hits, |h| h.value);
            // Any count Envoy can send is an answer, not an error: beyond the largest amount
            // it is over every limit (a take) or fills the bucket (a give) all the same.
            let hits = i64::try_from(hits)
                .unwrap_or(i64::MAX)
                .min(limits::MAX_AMOUNT);
            // The limit name is checked and the rate comes from the validated configuration:
            // only the tenant can be refused here.
            let Ok(bucket) =
                limits::bucket(&at, tenant, limit_name, rate.per_minute, rate.capacity)
            else {
                return Ok(Plan::Refuse);
            };
            if d.is_negative_hits {
                return Ok(Plan::Give(limits::movement(&at, bucket, hits)?));
            }
            Ok(Plan::Take(limits::take(&at, bucket, hits, hits)?))
        })
        .collect()
}

fn ms(ms: u64) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

fn status(take: &Take, code: Code, level: i64, reset_ms: u64) -> DescriptorStatus {
    let b = &take.bucket;
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: format!("llm_router/{}", b.limit.as_str()),
            requests_per_unit: u32::try_from(b.per_minute).unwrap_or(u32::MAX),
            unit: Unit::Minute as i32,
        }),
        limit_remaining: u32::try_from(level.max(0)).unwrap_or(u32::MAX),
        duration_until_reset: Some(ms(reset_ms)),
        ..Default::default()
    }
}

fn ok() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

/// Milliseconds until a bucket at `level` (whole) is full again.
fn until_full(take: &Take, level: i64) -> u64 {
    let b = &take.bucket;
    let missing = i128::from(b.capacity) - i128::from(level);
    if missing <= 0 {
        return 0;
    }
    let units = missing * i128::from(limits::UNITS_PER_WHOLE);
    let per_ms = i128::from(b.per_minute);
    u64::try_from((units + per_ms - 1) / per_ms).unwrap_or(u64::MAX)
}

pub struct Rls {
    pub backend: Backend,
    /// None: started without `--plugin-config`; every call fails with FAILED_PRECONDITION.
    pub limits: Option<Arc<Limits>>,
}

impl Rls {
    async fn answer(&self, request: RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let b = &self.backend;
        let Some(limits) = &self.limits else {
            b.stats.call(Method::ShouldRateLimit, Outcome::Error);
            return Err(Status::failed_precondition(
                "the quota service was started without --plugin-config: no limits to apply",
            ));
        };
        let plans = plan(&request, limits).map_err(|e| {
            b.stats.call(Method::ShouldRateLimit, Outcome::Invalid);
            Status::invalid_argument(e.0)
        })?;
        let mut statuses: Vec<DescriptorStatus> = plans.iter().map(|_| ok()).collect();
        // Takes grouped by tenant: one script call each, in order of first appearance.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        let mut refused = false;
        for (i, p) in plans.iter().enumerate() {
            match p {
                Plan::Pass => {}
                Plan::Refuse => {
                    statuses[i].code = Code::OverLimit as i32;
                    refused = true;
                }
                Plan::Give(m) => {
                    b.store
                        .give(std::slice::from_ref(m))
                        .await
                        .map_err(|e| b.store_failed(Method::ShouldRateLimit, e))?;
                }
                Plan::Take(t) => match groups.iter_mut().find(|(name, _)| *name == t.bucket.tenant)
                {
                    Some((_, idx)) if !idx.iter().any(|&j| same_limit(&plans[j], t)) => idx.push(i),
                    _ => groups.push((t.bucket.tenant.clone(), vec![i])),
                },
            }
        }
        let mut over = refused;
        for (_, idx) in &groups {
            let takes: Vec<Take> = idx
                .iter()
                .filter_map(|&i| match &plans[i] {
                    Plan::Take(t) => Some(t.clone()),
                    _ => None,
                })
                .collect();
            let outcome = b
                .store
                .take(&takes)
                .await
                .map_err(|e| b.store_failed(Method::ShouldRateLimit, e))?;
            for ((&i, t), g) in idx.iter().zip(&takes).zip(&outcome.grants) {
                statuses[i] = if outcome.retry_after_ms == 0 {
                    status(t, Code::Ok, g.level, until_full(t, g.level))
                } else if g.level < i64::try_from(t.min).unwrap_or(i64::MAX) {
                    over = true;
                    status(t, Code::OverLimit, g.level, outcome.retry_after_ms)
                } else {
                    // Fits by itself, but the tenant's other descriptor does not.
                    over = true;
                    status(t, Code::Ok, g.level, until_full(t, g.level))
                };
            }
        }
        b.store_answered();
        let result = if over { Outcome::Denied } else { Outcome::Ok };
        b.stats.call(Method::ShouldRateLimit, result);
        Ok(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..Default::default()
        })
    }
}

fn same_limit(p: &Plan, t: &Take) -> bool {
    matches!(p, Plan::Take(o) if o.bucket.limit == t.bucket.limit)
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.answer(request.into_inner()).await.map(Response::new)
    }
}

#[cfg(test)]
#[path = "rls_tests.rs"]
mod tests;
