//! Response side: watch the answer for its real `usage` (and time to first token) without
//! holding it back, then, once the request is over, reconcile the tenant's charge and count it.

use super::host::{
    now_ms, publish, response_body, response_header, set_response_header, SharedData,
};
use super::{Http, Routed, Shared};
use crate::metrics::{self, Metric};
use crate::ratelimit::{self, Outcome};
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
        self.status_code = response_header(":status").and_then(|s| s.trim().parse().ok());
        if self.local_reply {
            return;
        }
        if let Some(status) = &routed.limits_status {
            for (name, value) in ratelimit::headers(status) {
                set_response_header(name, &value);
            }
        }
        let content_type = response_header("content-type").unwrap_or_default();
        let sse = content_type
            .get(..17)
            .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"));
        self.response = if sse {
            ResponseScan::Sse(SseScanner::default())
        } else if routed.stream {
            ResponseScan::None
        } else {
            ResponseScan::Json(JsonUsageScanner::default())
        };
        self.response_ended = end_of_stream;
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
            self.publish_usage();
        }
    }

    /// The real usage for the trace, as soon as the response is complete: a span may end
    /// before the request's log callback (`finish` scans again; ending a scanner is idempotent).
    fn publish_usage(&mut self) {
        let usage = match &mut self.response {
            ResponseScan::Sse(s) => {
                s.finish();
                s.usage
            }
            ResponseScan::Json(j) => j.finish(),
            ResponseScan::None => None,
        };
        if let Some(u) = usage {
            publish(&crate::trace::usage(&u));
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
        self.reconcile(&routed, usage, ratelimit::outcome(&end));

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

    fn reconcile(&self, routed: &Routed, usage: Option<Usage>, outcome: Outcome) {
        let Some((tenant, charge)) = &routed.charge else {
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
        let owner = tenant.owner.as_deref();
        if let Err(e) = ratelimit::adjust_tenant(
            &SharedData,
            &tenant.key,
            &tenant.limits,
            owner,
            fix.requests,
            fix.tokens,
            now_ms(),
        ) {
            warn!(
                "llm-router: cannot reconcile tokens of {}: {e:?}",
                tenant.label
            );
        }
    }
}
