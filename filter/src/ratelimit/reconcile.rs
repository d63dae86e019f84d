//! What a request costs at admission, and what to give back or charge on top once it is over.
//! Pure decisions (the glue only reads the request's end state and applies the correction).

use crate::config::Tenants;

/// What the plan knows of a request when it is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// The prompt-token estimate; `None` when the body could not be read (too large, not
    /// JSON, a field of a type the model servers would not accept either).
    pub prompt: Option<u64>,
    /// Bytes of the body known at admission.
    pub body_bytes: u64,
    /// The completion limit (vLLM's rule: `max_completion_tokens` or `max_tokens`).
    pub max_tokens: Option<u64>,
    /// Completions asked for (`n`, or `best_of` when larger).
    pub n: u64,
}

impl Cost {
    /// Prompt tokens charged: the estimate, or for a body the filter could not read, its byte
    /// length: no tokenizer makes more tokens than the text has bytes, so it is never charged
    /// less than it could cost.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt.unwrap_or(self.body_bytes)
    }

    /// The completion reservation: `n * min(completion limit, cap)`, the cap when no limit is
    /// set (or the body could not be read).
    pub fn reserved(&self, cfg: &Tenants) -> u64 {
        let cap = cfg.max_tokens_cap;
        let per_choice = self.max_tokens.unwrap_or(cap).min(cap);
        self.n.max(1).saturating_mul(per_choice)
    }
}

/// Tokens charged at admission: prompt + completion reservation.
pub fn token_cost(cfg: &Tenants, cost: &Cost) -> u64 {
    cost.prompt_tokens().saturating_add(cost.reserved(cfg))
}

/// How a request ended, as far as its cost is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The filter answered it itself before forwarding (429, shed, 400, ...): the request and
    /// every token come back.
    NotForwarded,
    /// The upstream answered 2xx and the response ended, without usage: the estimate stands.
    Completed,
    /// A stream (ended or cut short) without usage: the prompt and what was streamed.
    Streamed { completion_tokens: u64 },
    /// Forwarded but not answered in full (upstream error, client cancel, reset): the server
    /// ran the prefill, so the prompt stays charged; the completion reservation comes back.
    Failed,
}

/// What was charged for a request, for its reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// Tokens taken at admission (the cost, capped at the bucket's burst).
    pub charged: u64,
    /// Prompt tokens: the estimate, or an unreadable body's bytes counted to its end.
    pub prompt: u64,
    /// The completion reservation of the cost.
    pub reserved: u64,
}

/// A correction to apply to the tenant's buckets: positive charges more (may drive a bucket
/// into debt), negative gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Correction {
    pub requests: i64,
    pub tokens: i64,
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The correction once a request is over. Real `usage` (from the response) wins whenever the
/// request was forwarded; otherwise the outcome decides what is kept.
pub fn reconcile(c: &Charge, usage_total: Option<u64>, outcome: Outcome) -> Correction {
    let keep = |kept: u64| Correction {
        requests: 0,
        tokens: signed(kept).saturating_sub(signed(c.charged)),
    };
    match (outcome, usage_total) {
        (Outcome::NotForwarded, _) => Correction {
            requests: -1,
            tokens: -signed(c.charged),
        },
        (_, Some(total)) => keep(total),
        (Outcome::Completed, None) => keep(c.prompt.saturating_add(c.reserved)),
        (Outcome::Streamed { completion_tokens }, None) => {
            keep(c.prompt.saturating_add(completion_tokens))
        }
        (Outcome::Failed, None) => keep(c.prompt),
    }
}

/// What the glue saw of a request's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// The request went upstream (the filter did not answer it itself).
    pub forwarded: bool,
    /// The upstream answered 2xx.
    pub ok: bool,
    /// The response's last byte arrived.
    pub ended: bool,
    /// For a server-sent-event response: the completion tokens estimated from what streamed.
    pub streamed: Option<u64>,
}

/// How a request ended, for `reconcile`.
pub fn outcome(end: &End) -> Outcome {
    match (end.forwarded, end.ok, end.streamed) {
        (false, _, _) => Outcome::NotForwarded,
        (true, true, Some(completion_tokens)) => Outcome::Streamed { completion_tokens },
        (true, true, None) if end.ended => Outcome::Completed,
        _ => Outcome::Failed,
    }
}
