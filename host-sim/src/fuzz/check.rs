//! The properties checked after every case.

use std::collections::{BTreeMap, BTreeSet};

use super::case::{escape, Cancel, Case};
use super::exec::Observed;
use super::facts::Facts;
use super::oracle;
use crate::Metric;

/// A property that failed: `kind` groups failures of one cause (`trap`, `owned-header`,
/// `rate-limit`, `chunked-vs-whole`, `metrics-differ`, `stall`, `host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

fn fail(kind: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { kind, detail })
}

/// No trap, no hang.
pub fn health(label: &str, o: &Observed) -> Result<(), Violation> {
    if let Some(t) = o.traps.first() {
        return fail("trap", format!("{label}: the VM trapped: {t}"));
    }
    if o.stalled {
        return fail(
            "stall",
            format!("{label}: the whole request was sent but it is neither forwarded nor answered"),
        );
    }
    Ok(())
}

/// The filter's own headers upstream: at most one value each, and only a value the filter can
/// have computed; none at all on requests the filter does not inspect (not POST).
pub fn owned_headers(
    label: &str,
    facts: &Facts,
    endpoints: &BTreeSet<Vec<u8>>,
    case: &Case,
    o: &Observed,
) -> Result<(), Violation> {
    for (name, values) in &o.owned_raw {
        if values.is_empty() {
            continue;
        }
        let shown: Vec<String> = values.iter().map(|v| escape(v)).collect();
        if values.len() > 1 {
            return fail(
                "owned-header",
                format!(
                    "{label}: {name} reached the upstream {} times: {shown:?}",
                    values.len()
                ),
            );
        }
        if case.method != "POST" {
            return fail(
                "owned-header",
                format!("{label}: {name}: {shown:?} reached the upstream on a {} request the filter does not inspect", case.method),
            );
        }
        let v = &values[0];
        let text = std::str::from_utf8(v).unwrap_or("");
        let ok = if *name == facts.tier_header {
            facts.tiers.contains(text)
        } else if *name == facts.model_header {
            facts.models.as_ref().is_none_or(|m| m.contains(text))
        } else if *name == facts.endpoint_header {
            endpoints.contains(v)
        } else if *name == facts.tokens_header {
            !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit())
        } else {
            true
        };
        if !ok {
            return fail(
                "owned-header",
                format!("{label}: {name}: {shown:?} is not a value the filter computes"),
            );
        }
    }
    Ok(())
}

/// The same request as sent (chunked, spoofed headers) and canonically decided the same.
pub fn same_decision(a: &Observed, b: &Observed) -> Result<(), Violation> {
    if a.decision == b.decision {
        return Ok(());
    }
    let (da, db) = (&a.decision, &b.decision);
    let mut diffs = Vec::new();
    if da.forwarded != db.forwarded {
        diffs.push(format!("forwarded {} vs {}", da.forwarded, db.forwarded));
    }
    if da.owned != db.owned {
        diffs.push(format!("routing headers {:?} vs {:?}", da.owned, db.owned));
    }
    if da.upstream_body != db.upstream_body {
        let cut = |s: &Option<String>| s.as_ref().map(|s| s.chars().take(300).collect::<String>());
        diffs.push(format!(
            "upstream body {:?} vs {:?}",
            cut(&da.upstream_body),
            cut(&db.upstream_body)
        ));
    }
    if da.local != db.local {
        diffs.push(format!("local reply {:?} vs {:?}", da.local, db.local));
    }
    if da.client_status != db.client_status {
        diffs.push(format!(
            "client status {} vs {}",
            da.client_status, db.client_status
        ));
    }
    if da.limit_headers != db.limit_headers {
        diffs.push(format!(
            "limit headers {:?} vs {:?}",
            da.limit_headers, db.limit_headers
        ));
    }
    fail(
        "chunked-vs-whole",
        format!(
            "as sent vs canonical (one chunk, no client routing headers): {}",
            diffs.join("; ")
        ),
    )
}

/// Metrics of the two hosts after the same cases.
pub fn same_metrics(a: &[Metric], b: &[Metric]) -> Result<(), Violation> {
    if a == b {
        return Ok(());
    }
    let names: BTreeSet<&str> = a.iter().chain(b).map(|m| m.name.as_str()).collect();
    for n in names {
        let ma = a.iter().find(|m| m.name == n);
        let mb = b.iter().find(|m| m.name == n);
        if ma != mb {
            let show = |m: Option<&Metric>| {
                m.map_or("absent".to_string(), |m| {
                    format!("{} {:?}", m.value, m.samples)
                })
            };
            return fail(
                "metrics-differ",
                format!("{n}: as sent {} vs canonical {}", show(ma), show(mb)),
            );
        }
    }
    Ok(())
}

/// Counts admitted requests per tenant and checks them against capacity + refill.
#[derive(Debug, Default)]
pub struct Admissions {
    admitted: BTreeMap<String, u64>,
}

impl Admissions {
    /// The tenant a request is charged to, when the fuzzer can tell for sure: no tenant header
    /// is `anonymous`; exactly one plain value is that tenant; anything else is not counted.
    pub fn tenant_of(facts: &Facts, case: &Case) -> Option<String> {
        let header = facts.tenant_header.as_ref()?;
        let values: Vec<&[u8]> = case
            .headers
            .iter()
            .filter(|(k, _)| k.0.eq_ignore_ascii_case(header.as_bytes()))
            .map(|(_, v)| v.0.as_slice())
            .collect();
        match values.as_slice() {
            [] => Some("anonymous".into()),
            [one]
                if !one.is_empty()
                    && one.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') =>
            {
                Some(String::from_utf8_lossy(one).into_owned())
            }
            _ => None,
        }
    }

    pub fn record(
        &mut self,
        facts: &Facts,
        case: &Case,
        a: &Observed,
        elapsed_ms: u64,
    ) -> Result<(), Violation> {
        let routed = a
            .owned_raw
            .iter()
            .any(|(n, v)| *n == facts.tier_header && !v.is_empty());
        if !routed {
            return Ok(());
        }
        let Some(tenant) = Self::tenant_of(facts, case) else {
            return Ok(());
        };
        let Some(limit) = facts.request_limit(&tenant) else {
            return Ok(());
        };
        let n = self.admitted.entry(tenant.clone()).or_insert(0);
        *n += 1;
        let bound = limit.burst + limit.per_minute * elapsed_ms as f64 / 60_000.0;
        if *n as f64 > bound.floor() + 1e-9 {
            return fail(
                "rate-limit",
                format!(
                    "tenant {tenant}: {n} requests admitted in {elapsed_ms} ms, more than capacity {} + refill {}/min allows ({})",
                    limit.burst,
                    limit.per_minute,
                    bound.floor()
                ),
            );
        }
        Ok(())
    }
}

fn header_value<'o>(o: &'o Observed, name: &str) -> Option<&'o [u8]> {
    o.owned_raw
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.first())
        .map(Vec::as_slice)
}

/// A POST whose path a model server reads as an API path is inspected: routed or answered by
/// the filter (no spelling of the path walks around the limits and rules).
pub fn inspected(label: &str, facts: &Facts, case: &Case, o: &Observed) -> Result<(), Violation> {
    if case.method != "POST" || matches!(case.cancel, Cancel::MidBody(_)) {
        return Ok(());
    }
    let path = oracle::server_path(&case.path.0);
    if !facts.apis.iter().any(|a| oracle::under(&path, a)) {
        return Ok(());
    }
    if header_value(o, &facts.tier_header).is_some() || o.decision.local.is_some() {
        return Ok(());
    }
    fail(
        "uninspected-api-post",
        format!(
            "{label}: POST {} (a server reads {}) went {} without inspection",
            escape(&case.path.0),
            escape(&path),
            if o.decision.forwarded {
                "upstream"
            } else {
                "nowhere"
            }
        ),
    )
}

/// A routed JSON object body names the routed model where the model server looks: its last
/// top-level `model` member is the model header's value, and a rewrite adds no member.
pub fn model_in_body(
    label: &str,
    facts: &Facts,
    case: &Case,
    o: &Observed,
) -> Result<(), Violation> {
    let (Some(model), Some(body)) = (header_value(o, &facts.model_header), &o.upstream_body) else {
        return Ok(());
    };
    if matches!(case.cancel, Cancel::MidBody(_)) || body.len() > facts.max_body_bytes {
        return Ok(());
    }
    let Some(members) = oracle::top_members(body) else {
        return Ok(());
    };
    let models: Vec<&str> = members
        .iter()
        .filter(|(k, _)| k == "model")
        .map(|(_, v)| v.get())
        .collect();
    let want = serde_json::Value::String(String::from_utf8_lossy(model).into_owned()).to_string();
    let rewritten = *body != case.body.0;
    // A rewrite never adds a `model` member next to existing ones (duplicates the client sent
    // may stay when the last one already names the routed model).
    let sent = oracle::top_members(&case.body.0)
        .map_or(0, |m| m.iter().filter(|(k, _)| k == "model").count());
    if models.last() != Some(&want.as_str()) || (rewritten && models.len() > sent.max(1)) {
        return fail(
            "model-rewrite",
            format!(
                "{label}: routed to {} = {want} but the upstream body's top-level model members are {models:?} (body {}: {})",
                facts.model_header,
                if rewritten { "rewritten" } else { "as sent" },
                escape(body).chars().take(300).collect::<String>()
            ),
        );
    }
    Ok(())
}
