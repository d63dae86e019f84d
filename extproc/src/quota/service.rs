//! `llm_router.quota.v1.Quota`: validates a call, runs the script, maps failures to gRPC
//! codes (INVALID_ARGUMENT, UNAVAILABLE when Redis does not answer in time, INTERNAL for an
//! answer the script cannot give) and counts the outcome.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::limits::{self, Invalid, Move, Take};
use super::proto::{
    AmountItem, AmountRequest, AnswerFuture, Grant, LevelsResponse, Quota, TakeItem, TakeRequest,
    TakeResponse,
};
use super::script::{Store, StoreError};
use super::stats::{Method, Outcome, QuotaStats, RedisError};

/// What the gRPC services share: Redis and the counters.
#[derive(Debug, Clone)]
pub struct Backend {
    pub store: Store,
    pub stats: Arc<QuotaStats>,
}

impl Backend {
    /// The status for a failed Redis call; counts it and keeps the up gauge current.
    pub fn store_failed(&self, method: Method, e: StoreError) -> Status {
        self.stats.set_redis_up(self.store.is_up());
        match e {
            StoreError::Unavailable(why) => {
                self.stats.redis_error(RedisError::Unavailable);
                self.stats.call(method, Outcome::Unavailable);
                log::debug!("{why}");
                Status::unavailable(format!("quota store unavailable: {why}"))
            }
            StoreError::Reply(why) => {
                self.stats.redis_error(RedisError::Reply);
                self.stats.call(method, Outcome::Error);
                log::warn!("unexpected Redis answer: {why}");
                Status::internal("quota store answered unexpectedly")
            }
        }
    }

    pub fn store_answered(&self) {
        self.stats.set_redis_up(true);
    }

    fn refuse(&self, method: Method, e: Invalid) -> Status {
        self.stats.call(method, Outcome::Invalid);
        Status::invalid_argument(e.0)
    }
}

fn bucket_of(at: &str, b: Option<&super::proto::Bucket>) -> Result<limits::Bucket, Invalid> {
    let Some(b) = b else {
        return Err(Invalid(format!("{at}.bucket: required")));
    };
    limits::bucket(at, &b.tenant, &b.limit, b.per_minute, b.capacity)
}

/// A Take call as the script takes it.
pub fn take_items(items: &[TakeItem]) -> Result<Vec<Take>, Invalid> {
    limits::item_count(items.len())?;
    let takes = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("items[{i}]");
            limits::take(
                &at,
                bucket_of(&at, item.bucket.as_ref())?,
                item.want,
                item.min,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    limits::same_tenant(takes.iter().map(|t| &t.bucket))?;
    Ok(takes)
}

/// A Give or Charge call as the script takes it.
pub fn amount_items(items: &[AmountItem]) -> Result<Vec<Move>, Invalid> {
    limits::item_count(items.len())?;
    let moves = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("items[{i}]");
            limits::movement(&at, bucket_of(&at, item.bucket.as_ref())?, item.amount)
        })
        .collect::<Result<Vec<_>, _>>()?;
    limits::same_tenant(moves.iter().map(|m| &m.bucket))?;
    Ok(moves)
}

#[derive(Debug, Clone)]
pub struct QuotaService(pub Backend);

impl QuotaService {
    async fn take_call(self, request: TakeRequest) -> Result<Response<TakeResponse>, Status> {
        let b = &self.0;
        let items = take_items(&request.items).map_err(|e| b.refuse(Method::Take, e))?;
        let outcome = match b.store.take(&items).await {
            Ok(o) => o,
            Err(e) => return Err(b.store_failed(Method::Take, e)),
        };
        b.store_answered();
        let result = if outcome.retry_after_ms == 0 {
            Outcome::Ok
        } else {
            Outcome::Denied
        };
        b.stats.call(Method::Take, result);
        Ok(Response::new(TakeResponse {
            grants: outcome
                .grants
                .iter()
                .map(|g| Grant {
                    granted: g.granted,
                    level: g.level,
                })
                .collect(),
            retry_after_ms: outcome.retry_after_ms,
        }))
    }

    async fn move_call(
        self,
        method: Method,
        request: AmountRequest,
    ) -> Result<Response<LevelsResponse>, Status> {
        let b = &self.0;
        let items = amount_items(&request.items).map_err(|e| b.refuse(method, e))?;
        let levels = if method == Method::Give {
            b.store.give(&items).await
        } else {
            b.store.charge(&items).await
        };
        match levels {
            Ok(levels) => {
                b.store_answered();
                b.stats.call(method, Outcome::Ok);
                Ok(Response::new(LevelsResponse { levels }))
            }
            Err(e) => Err(b.store_failed(method, e)),
        }
    }
}

impl Quota for QuotaService {
    fn take(&self, request: Request<TakeRequest>) -> AnswerFuture<TakeResponse> {
        Box::pin(self.clone().take_call(request.into_inner()))
    }

    fn give(&self, request: Request<AmountRequest>) -> AnswerFuture<LevelsResponse> {
        Box::pin(self.clone().move_call(Method::Give, request.into_inner()))
    }

    fn charge(&self, request: Request<AmountRequest>) -> AnswerFuture<LevelsResponse> {
        Box::pin(self.clone().move_call(Method::Charge, request.into_inner()))
    }
}
