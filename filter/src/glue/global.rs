//! Global limits in the contexts: the root context's tick starts the background calls of the
//! quota service (`ratelimit::global::tick`) and applies their answers; an HTTP context whose
//! tenant's lease is empty waits for one synchronous `Take`, then goes on or gets its reply.
//! Decisions are `ratelimit::global`'s; this module only calls the host and applies them.

use super::abi::{self, buffer};
use super::host::{now_ms, SharedData};
use super::request::{apply_gate, Charged, Parked, PendingTake};
use super::{Http, Root, Shared};
use crate::config::{Global, Tenants};
use crate::metrics::{self, Metric};
use crate::quota::{self, wire, Method};
use crate::ratelimit::global::{self, Answer, Decision, Job};
use log::{info, warn};
use proxy_wasm::types::Action;
use std::collections::HashMap;

/// Background calls one VM keeps in flight at most (each is answered or times out).
const MAX_JOBS: usize = 1024;

/// The root context's part: calls in flight by token, and where the next walk starts.
#[derive(Default)]
pub struct Background {
    jobs: HashMap<u32, Job>,
    cursor: usize,
}

/// A request waiting for its `Take`.
pub(super) struct Waiting {
    token: u32,
    take: PendingTake,
    parked: Parked,
    /// The request ended (client gone) before the answer came.
    gone: bool,
}

fn settings(sh: &Shared) -> Option<(&Tenants, &Global)> {
    let t = sh.cfg.tenants.as_ref()?;
    Some((t, t.global.as_ref()?))
}

/// Starts a call of the quota service; `None` when the host refused to start it (counted).
fn dispatch(sh: &Shared, g: &Global, method: Method, message: &[u8]) -> Option<u32> {
    match abi::dispatch_grpc_call(
        &g.upstream,
        quota::SERVICE,
        method.name(),
        message,
        g.timeout_ms,
    ) {
        Ok(token) => Some(token),
        Err(status) => {
            warn!(
                "llm-router: cannot call the quota service on cluster {}: {status:?}",
                g.cluster
            );
            answered(sh, g, method, metrics::CALL_NOT_SENT);
            None
        }
    }
}

/// Counts a call's result and records whether the service is reachable (logged and shown in
/// `llm_router_global_outage` once per change, by the worker that saw it change).
fn answered(sh: &Shared, g: &Global, method: Method, result: u16) {
    sh.stats.inc(Metric::GlobalCalls, &[method.label(), result]);
    let down = result != metrics::CALL_OK;
    match global::set_outage(&SharedData, down, now_ms()) {
        Ok(true) => {
            let action = metrics::outage_action(g.on_outage);
            sh.stats
                .record(Metric::GlobalOutage, &[action], u64::from(down));
            if down {
                warn!(
                    "llm-router: quota service (cluster {}) unreachable: leases are spent, then on_outage applies",
                    g.cluster
                );
            } else {
                info!(
                    "llm-router: quota service (cluster {}) reachable again",
                    g.cluster
                );
            }
        }
        Ok(false) => {}
        Err(e) => warn!("llm-router: cannot record the quota service state: {e:?}"),
    }
}

/// The answer's bytes, or the result label of a failed call.
fn answer_bytes(status_code: u32, size: usize) -> Result<Vec<u8>, u16> {
    if status_code != 0 {
        return Err(metrics::CALL_ERROR);
    }
    if size > wire::MAX_MESSAGE_BYTES {
        return Err(metrics::CALL_UNREADABLE);
    }
    abi::get_buffer(buffer::GRPC_RECEIVE, 0, size).map_err(|_| metrics::CALL_UNREADABLE)
}

fn decode_answer(method: Method, status_code: u32, size: usize) -> (Answer, u16) {
    let bytes = match answer_bytes(status_code, size) {
        Ok(b) => b,
        Err(result) => return (Answer::Failed, result),
    };
    let answer = match method {
        Method::Take => wire::decode_take_response(&bytes).map(|r| Answer::Granted(r.grants)),
        Method::Give | Method::Charge => wire::decode_levels_response(&bytes).map(|_| Answer::Done),
    };
    match answer {
        Ok(a) => (a, metrics::CALL_OK),
        Err(_) => (Answer::Failed, metrics::CALL_UNREADABLE),
    }
}

impl Root {
    /// One tick: start the calls the walk of the lease index asks for.
    pub(super) fn tick(&mut self) {
        let Some(sh) = self.shared.clone() else {
            return;
        };
        let Some((tenants, g)) = settings(&sh) else {
            return;
        };
        let now = now_ms();
        let jobs = match global::tick(tenants, g, &SharedData, now, self.background.cursor) {
            Ok((jobs, cursor)) => {
                self.background.cursor = cursor;
                jobs
            }
            Err(e) => {
                warn!("llm-router: global limits: cannot walk the leases: {e:?}");
                return;
            }
        };
        for job in jobs {
            let token = if self.background.jobs.len() < MAX_JOBS {
                dispatch(&sh, g, job.call.method, &job.message)
            } else {
                None
            };
            match token {
                Some(token) => {
                    self.background.jobs.insert(token, job);
                }
                None => {
                    if let Err(e) = global::finish(g, &job, &Answer::Failed, &SharedData, now) {
                        warn!("llm-router: global limits: cannot release a lease: {e:?}");
                    }
                }
            }
        }
    }

    /// The answer (or failure) of a background call.
    pub(super) fn job_answered(&mut self, token: u32, status_code: u32, size: usize) {
        let Some(job) = self.background.jobs.remove(&token) else {
            return;
        };
        let Some(sh) = self.shared.clone() else {
            return;
        };
        let Some((_, g)) = settings(&sh) else {
            return;
        };
        let (answer, result) = decode_answer(job.call.method, status_code, size);
        answered(&sh, g, job.call.method, result);
        if let Answer::Granted(grants) = &answer {
            if grants.iter().any(|gr| gr.granted > 0) {
                sh.stats.inc(Metric::LeaseRefills, &[metrics::TRIGGER_TICK]);
            }
        }
        if let Err(e) = global::finish(g, &job, &answer, &SharedData, now_ms()) {
            warn!("llm-router: global limits: cannot apply an answer: {e:?}");
        }
    }
}

impl Http {
    /// The tenant's lease is empty: ask the quota service, and hold the request until it
    /// answers (or go on at once when the call cannot even start: the outage path).
    pub(super) fn wait_for_take(
        &mut self,
        sh: &Shared,
        take: PendingTake,
        parked: Parked,
    ) -> Action {
        let Some((_, g)) = settings(sh) else {
            return self.resume(sh, Decision::from(unavailable_gate()), take, parked);
        };
        let message = wire::encode_take_request(&take.request);
        match dispatch(sh, g, Method::Take, &message) {
            Some(token) => {
                self.waiting = Some(Waiting {
                    token,
                    take,
                    parked,
                    gone: false,
                });
                Action::Pause
            }
            None => {
                let d = self.decide_after_take(sh, &take, None);
                self.resume(sh, d, take, parked)
            }
        }
    }

    fn decide_after_take(
        &self,
        sh: &Shared,
        take: &PendingTake,
        answer: Option<&quota::TakeResponse>,
    ) -> Decision {
        let Some((tenants, g)) = settings(sh) else {
            return unavailable_gate().into();
        };
        match global::after_take(
            tenants,
            g,
            &take.tenant,
            take.tokens,
            take.lacking,
            answer,
            &SharedData,
            now_ms(),
        ) {
            Ok(d) => d,
            Err(e) => {
                warn!("llm-router: global limits: cannot charge the lease: {e:?}");
                unavailable_gate().into()
            }
        }
    }

    /// The answer to this request's `Take`.
    pub(super) fn take_answered(&mut self, token: u32, status_code: u32, size: usize) {
        if self.waiting.as_ref().is_none_or(|w| w.token != token) {
            return;
        }
        let (Some(w), Some(sh)) = (self.waiting.take(), self.shared.clone()) else {
            return;
        };
        let Some((tenants, g)) = settings(&sh) else {
            return;
        };
        let answer = answer_bytes(status_code, size)
            .and_then(|b| wire::decode_take_response(&b).map_err(|_| metrics::CALL_UNREADABLE));
        answered(
            &sh,
            g,
            Method::Take,
            answer.as_ref().map_or_else(|r| *r, |_| metrics::CALL_OK),
        );
        let answer = answer.ok();
        if answer
            .as_ref()
            .is_some_and(|a| a.retry_after_ms == 0 && a.grants.iter().any(|gr| gr.granted > 0))
        {
            sh.stats
                .inc(Metric::LeaseRefills, &[metrics::TRIGGER_REQUEST]);
        }
        if w.gone {
            // Nothing was charged and nothing waits: keep what was granted for the next ones.
            if let Some(a) = &answer {
                if let Err(e) =
                    global::keep_grant(tenants, g, &w.take.tenant, a, &SharedData, now_ms())
                {
                    warn!("llm-router: global limits: cannot keep a grant: {e:?}");
                }
            }
            return;
        }
        let d = self.decide_after_take(&sh, &w.take, answer.as_ref());
        if let Action::Continue = self.resume(&sh, d, w.take, w.parked) {
            if let Err(status) = abi::continue_request() {
                warn!("llm-router: cannot resume the request: {status:?}");
            }
        }
    }

    /// Applies a global decision to a parked request: go on (endpoint pick, rewrite) or reply.
    fn resume(
        &mut self,
        sh: &Shared,
        d: Decision,
        take: PendingTake,
        mut parked: Parked,
    ) -> Action {
        if d.fallback {
            if let Some((_, g)) = settings(sh) {
                let action = metrics::outage_action(g.on_outage);
                sh.stats.inc(Metric::GlobalFallback, &[action]);
            }
        }
        match apply_gate(sh, d.gate, &take.cost, &mut parked.routed) {
            Charged::Go => {
                // Resumed in a later callback: the endpoint pick reads the clock again.
                parked.now = now_ms();
                self.proceed(sh, parked)
            }
            Charged::Refused(reply) => {
                self.routed = Some(parked.routed);
                self.reply(&reply)
            }
            // `after_take` never asks for a second take.
            Charged::Take(_) => {
                self.routed = Some(parked.routed);
                let crate::ratelimit::Gate::Unavailable { reply, .. } = unavailable_gate() else {
                    return Action::Continue;
                };
                self.reply(&reply)
            }
        }
    }

    /// The request ended while its `Take` was in flight: nothing was charged; a late answer
    /// only fills the lease.
    pub(super) fn abandon_take(&mut self) {
        if let Some(w) = &mut self.waiting {
            w.gone = true;
        }
    }
}

fn unavailable_gate() -> crate::ratelimit::Gate {
    crate::ratelimit::unavailable("global limits not configured".into())
}
