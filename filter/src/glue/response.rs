//! Response side: watch the answer for its real `usage` (and time to first token) without
//! holding it back, then, once the request is over, reconcile the tenant's charge and count it.

use super::host::{
    now_ms, publish_facts, response_body, response_headers, set_response_header, SharedData,
};
use super::request::{publish_tokens, COMPLETION_TOKENS_PROPERTY};
use super::{Http, Routed, Shared};
use crate::metrics::{self, Metric};
use crate::ratelimit::{self, Booked, Outcome};
use crate::usage::{JsonUsageScanner, SseScanner, Usage};
use log::warn;

pub(super) enum ResponseScan {
    None,
    Sse(SseScanner),
    Json(JsonUsageScanner),
}

impl Http {
    pub(super) fn response_headers(&mut self, end_of_stream: bool) {
        let Some(routed) = &self.routed else {
            return;
        };
        let [status, content_type] = response_headers([":status", "content-type"]);
        self.status_code = status.and_then(|s| s.trim().parse().ok());
        if self.local_reply {
            return;
        }
        if let Some(status) = &routed.limits_status {
            for (name, value) in ratelimit::headers(status) {
                set_response_header(name, &value);
            }
        }
        let content_type = content_type.unwrap_or_default();
        let sse = content_type
            .get(..17)
            .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"));
        self.response = if sse {
            ResponseScan::Sse(SseScanner::default())
        } else if routed.stream {
            ResponseScan::None
        } else if self
            .shared
            .as_ref()
            .is_some_and(|sh| sh.cfg.tenants.is_some())
        {
            ResponseScan::Json(JsonUsageScanner::default())
        } else {
            // The completion's estimate is read only to charge a tenant when the answer
            // carries no usage (`publish_completion`): without tenants, usage only.
            ResponseScan::Json(JsonUsageScanner::usage_only())
        };
        self.response_ended = end_of_stream;
        if end_of_stream {
            self.publish_completion();
        }
    }

    /// At the end of the response (a span may end before the request's log callback; ending
    /// a scanner is idempotent, `finish` scans again): the real `usage` for the trace, both
    /// figures (`trace::usage`); without one, for Envoy's own `ratelimit` filter
    /// (`apply_on_stream_done`, tenants configured) the completion tokens as estimated
    /// (streamed text, or the reservation).
    fn publish_completion(&mut self) {
        let Some(routed) = &self.routed else {
            return;
        };
        if self.local_reply {
            return;
        }
        let reserved = routed.charge.as_ref().map_or(0, |(_, c, _)| c.reserved);
        let (usage, estimate) = match &mut self.response {
            ResponseScan::Sse(s) => {
                s.finish();
                (s.usage, s.completion_estimate)
            }
            ResponseScan::Json(j) => (j.finish(), j.completion_estimate()),
            ResponseScan::None => (None, reserved),
        };
        let (tracing, tenants) = self.shared.as_ref().map_or((true, false), |sh| {
            (sh.cfg.trace_properties, sh.cfg.tenants.is_some())
        });
        if let Some(u) = usage {
            // Also what Envoy's `ratelimit` filter reads when tenants are configured.
            if tracing || tenants {
                publish_facts(&crate::trace::usage(&u));
            }
        } else if tenants {
            publish_tokens(COMPLETION_TOKENS_PROPERTY, estimate);
        }
    }

    pub(super) fn response_chunk(&mut self, body_size: usize, end_of_stream: bool) {
        if self.routed.is_none() || self.local_reply {
            return;
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
            ResponseScan::Json(scanner) => scanner.feed(&response_body(body_size)),
        }
        if end_of_stream {
            self.publish_completion();
        }
    }

    /// Everything that happens once per request at its end: reconcile the token charge with
    /// real usage (or with what the outcome says is kept) and count the request.
    pub(super) fn finish(&mut self, sh: &Shared) {
        let Some(mut routed) = self.routed.take() else {
            return;
        };
        if let Some(ticket) = routed.ticket.take() {
            ticket.release();
        }
        // One clock read for the reconciliation and the duration.
        let now = now_ms();
        let ok = self.status_code.is_some_and(|c| (200..300).contains(&c));
        let (usage, streamed): (Option<Usage>, Option<u64>) = match &mut self.response {
            ResponseScan::Sse(s) => {
                s.finish();
                (s.usage, Some(s.completion_estimate))
            }
            ResponseScan::Json(j) if self.response_ended && ok => (j.finish(), None),
            _ => (None, None),
        };
        let status = match (self.local_reply, self.status_code) {
            (true, _) => metrics::STATUS_LOCAL,
            (false, Some(code)) => metrics::status_class(code),
            (false, None) => metrics::STATUS_CANCELLED,
        };
        let end = ratelimit::End {
            forwarded: !self.local_reply,
            ok,
            ended: self.response_ended,
            streamed,
        };
        self.reconcile(&routed, usage, ratelimit::outcome(&end), now);

        sh.stats
            .inc(Metric::Requests, &[routed.tier, routed.model, status]);
        if !self.local_reply {
            let elapsed = now.saturating_sub(self.start_ms);
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

    fn reconcile(&self, routed: &Routed, usage: Option<Usage>, outcome: Outcome, now: u64) {
        let Some((tenant, charge, booked)) = &routed.charge else {
            return;
        };
        let mut charge = *charge;
        if routed.prompt_estimate.is_none() {
            // An unreadable body is charged by its bytes, counted to its end.
            let total = self
                .body_at_decision
                .saturating_add(self.body_after_decision);
            charge.prompt = charge.prompt.max(total.max(self.body_declared));
        }
        let fix = ratelimit::reconcile(&charge, usage.map(|u| u.total()), outcome);
        if fix.requests == 0 && fix.tokens == 0 {
            return;
        }
        let global = self
            .shared
            .as_ref()
            .and_then(|sh| sh.cfg.tenants.as_ref())
            .and_then(|t| t.global.as_ref());
        let done = match (booked, global) {
            (Booked::Lease | Booked::Debt, Some(g)) => ratelimit::global::reconcile(
                g,
                tenant,
                *booked,
                (fix.requests, fix.tokens),
                &SharedData,
                now,
            ),
            _ => ratelimit::adjust_tenant(
                &SharedData,
                &tenant.key,
                &tenant.limits,
                tenant.owner.as_deref(),
                fix.requests,
                fix.tokens,
                now,
            ),
        };
        if let Err(e) = done {
            warn!(
                "llm-router: cannot reconcile tokens of {}: {e:?}",
                tenant.label
            );
        }
    }
}
