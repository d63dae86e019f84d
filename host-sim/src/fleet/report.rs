//! Figures per workload x QPS x policy, the text table, CSV / JSON, and the goals.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::driver::Outcome;
use super::workload::Request;

/// The figures of one point (one workload, QPS and policy; seeds pooled).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub workload: String,
    pub qps: f64,
    pub policy: String,
    /// Requests measured (arrived after the warm-up).
    pub requests: usize,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
    pub e2e_p50_s: f64,
    pub e2e_p99_s: f64,
    /// Completed requests per second and output tokens per second over the measured span.
    pub req_per_s: f64,
    pub out_tok_per_s: f64,
    /// Cached prompt tokens / prompt tokens.
    pub hit_rate: f64,
    /// Requests the filter left to the gateway's balancing (no fresh snapshot).
    pub fallbacks: u64,
    /// Of the requests whose conversation / document was seen before, the share sent to another
    /// server than the previous one of the same conversation / document.
    pub moved: f64,
    /// Why the policy did not run (e.g. the filter refused `endpoints.prefix`).
    pub unavailable: Option<String>,
}

/// Accumulates the measured requests of one point over seeds.
#[derive(Debug, Default, Clone)]
pub struct Acc {
    ttft: Vec<f64>,
    e2e: Vec<f64>,
    prompt: u64,
    cached: u64,
    out_tokens: u64,
    span_s: f64,
    fallbacks: u64,
    repeats: u64,
    moves: u64,
}

impl Acc {
    pub fn add(&mut self, reqs: &[Request], outs: &[Outcome], warmup_us: u64, fallbacks: u64) {
        let mut last = warmup_us;
        let mut seen: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        for (r, o) in reqs.iter().zip(outs) {
            let before = seen.insert(r.group, o.server);
            if r.arrival_us < warmup_us {
                continue;
            }
            if let Some(b) = before {
                self.repeats += 1;
                self.moves += u64::from(b != o.server);
            }
            let (Some(f), Some(d)) = (o.first_us, o.done_us) else {
                continue;
            };
            self.ttft.push((f - r.arrival_us) as f64 / 1e6);
            self.e2e.push((d - r.arrival_us) as f64 / 1e6);
            self.prompt += u64::from(r.prompt_tokens);
            self.cached += u64::from(o.cached_tokens);
            self.out_tokens += u64::from(r.output_tokens);
            last = last.max(d);
        }
        self.span_s += (last - warmup_us) as f64 / 1e6;
        self.fallbacks += fallbacks;
    }

    pub fn summary(mut self, workload: &str, qps: f64, policy: &str) -> Summary {
        self.ttft.sort_by(f64::total_cmp);
        self.e2e.sort_by(f64::total_cmp);
        let span = self.span_s.max(1e-9);
        Summary {
            workload: workload.into(),
            qps,
            policy: policy.into(),
            requests: self.ttft.len(),
            ttft_p50_s: pct(&self.ttft, 50.0),
            ttft_p99_s: pct(&self.ttft, 99.0),
            e2e_p50_s: pct(&self.e2e, 50.0),
            e2e_p99_s: pct(&self.e2e, 99.0),
            req_per_s: self.ttft.len() as f64 / span,
            out_tok_per_s: self.out_tokens as f64 / span,
            hit_rate: if self.prompt == 0 {
                0.0
            } else {
                self.cached as f64 / self.prompt as f64
            },
            fallbacks: self.fallbacks,
            moved: if self.repeats == 0 {
                0.0
            } else {
                self.moves as f64 / self.repeats as f64
            },
            unavailable: None,
        }
    }
}

/// Nearest-rank percentile of sorted values (0 for none).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn unavailable(workload: &str, qps: f64, policy: &str, why: String) -> Summary {
    Summary {
        workload: workload.into(),
        qps,
        policy: policy.into(),
        requests: 0,
        ttft_p50_s: f64::NAN,
        ttft_p99_s: f64::NAN,
        e2e_p50_s: f64::NAN,
        e2e_p99_s: f64::NAN,
        req_per_s: f64::NAN,
        out_tok_per_s: f64::NAN,
        hit_rate: f64::NAN,
        fallbacks: 0,
        moved: f64::NAN,
        unavailable: Some(why),
    }
}

pub fn table(rows: &[Summary]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<9} {:>6} {:<20} {:>6} {:>9} {:>9} {:>8} {:>8} {:>7} {:>8} {:>6} {:>6} {:>5}",
        "workload",
        "QPS",
        "policy",
        "reqs",
        "TTFT p50",
        "TTFT p99",
        "E2E p50",
        "E2E p99",
        "req/s",
        "tok/s",
        "hit%",
        "moved%",
        "fallb"
    );
    let mut last = "";
    for r in rows {
        if r.workload != last && !last.is_empty() {
            s.push('\n');
        }
        last = &r.workload;
        if let Some(why) = &r.unavailable {
            let _ = writeln!(
                s,
                "{:<9} {:>6} {:<20} unavailable: {why}",
                r.workload, r.qps, r.policy
            );
            continue;
        }
        let _ = writeln!(
            s,
            "{:<9} {:>6} {:<20} {:>6} {:>8.3}s {:>8.3}s {:>7.2}s {:>7.2}s {:>7.2} {:>8.0} {:>5.1}% {:>5.1}% {:>5}",
            r.workload, r.qps, r.policy, r.requests, r.ttft_p50_s, r.ttft_p99_s, r.e2e_p50_s,
            r.e2e_p99_s, r.req_per_s, r.out_tok_per_s, r.hit_rate * 100.0, r.moved * 100.0,
            r.fallbacks
        );
    }
    s
}

pub fn csv(rows: &[Summary]) -> String {
    let mut s = String::from(
        "workload,qps,policy,requests,ttft_p50_s,ttft_p99_s,e2e_p50_s,e2e_p99_s,req_per_s,out_tok_per_s,prefix_cache_hit_rate,moved,fallbacks,unavailable\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.3},{:.1},{:.4},{:.4},{},{}",
            r.workload,
            r.qps,
            r.policy,
            r.requests,
            r.ttft_p50_s,
            r.ttft_p99_s,
            r.e2e_p50_s,
            r.e2e_p99_s,
            r.req_per_s,
            r.out_tok_per_s,
            r.hit_rate,
            r.moved,
            r.fallbacks,
            r.unavailable
                .as_deref()
                .unwrap_or("")
                .replace([',', '\n'], ";")
        );
    }
    s
}

fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

pub fn to_json(rows: &[Summary], params: Value, goals: &[Goal]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "workload": r.workload, "qps": r.qps, "policy": r.policy, "requests": r.requests,
                "ttft_p50_s": num(r.ttft_p50_s), "ttft_p99_s": num(r.ttft_p99_s),
                "e2e_p50_s": num(r.e2e_p50_s), "e2e_p99_s": num(r.e2e_p99_s),
                "req_per_s": num(r.req_per_s), "out_tok_per_s": num(r.out_tok_per_s),
                "prefix_cache_hit_rate": num(r.hit_rate), "moved": num(r.moved),
                "fallbacks": r.fallbacks,
                "unavailable": r.unavailable,
            })
        })
        .collect();
    let goals: Vec<Value> = goals
        .iter()
        .map(|g| json!({"goal": g.name, "met": g.met, "detail": g.detail}))
        .collect();
    json!({"parameters": params, "results": rows, "goals": goals})
}

/// One of the goals, evaluated on the results.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub name: String,
    /// None: could not be evaluated (say why in `detail`).
    pub met: Option<bool>,
    pub detail: String,
}

fn find<'a>(rows: &'a [Summary], w: &str, qps: f64, p: &str) -> Option<&'a Summary> {
    rows.iter()
        .find(|r| r.workload == w && r.qps == qps && r.policy == p && r.unavailable.is_none())
}

const RR: &str = "round-robin";
const LQ: &str = "least-queue";
const AFF: &str = "llm-router+affinity";

/// The goals of issue 12 that the simulator can judge.
pub fn goals(rows: &[Summary]) -> Vec<Goal> {
    let mut out = Vec::new();
    // Multi-turn chat at the first QPS where round robin's p99 TTFT passes 2 s.
    let mut qs: Vec<f64> = rows
        .iter()
        .filter(|r| r.workload == "chat")
        .map(|r| r.qps)
        .collect();
    qs.sort_by(f64::total_cmp);
    qs.dedup();
    let knee = qs
        .iter()
        .copied()
        .find(|q| find(rows, "chat", *q, RR).is_some_and(|r| r.ttft_p99_s > 2.0));
    let chat = |name: &str, f: &dyn Fn(&Summary, &Summary, &Summary) -> (bool, String)| {
        let Some(q) = knee else {
            return Goal {
                name: name.into(),
                met: None,
                detail:
                    "round robin's chat p99 TTFT never passes 2 s in this sweep (raise the QPS)"
                        .into(),
            };
        };
        match (
            find(rows, "chat", q, AFF),
            find(rows, "chat", q, LQ),
            find(rows, "chat", q, RR),
        ) {
            (Some(a), Some(l), Some(r)) => {
                let (met, d) = f(a, l, r);
                Goal {
                    name: name.into(),
                    met: Some(met),
                    detail: format!("at {q} QPS: {d}"),
                }
            }
            _ => Goal {
                name: name.into(),
                met: None,
                detail: format!("at {q} QPS: {AFF}, {LQ} or {RR} did not run"),
            },
        }
    };
    out.push(chat(
        "chat: affinity p99 TTFT >= 3x lower than least-queue",
        &|a, l, _| {
            let ratio = l.ttft_p99_s / a.ttft_p99_s.max(1e-9);
            (
                ratio >= 3.0,
                format!(
                    "affinity {:.3} s, least-queue {:.3} s: {ratio:.2}x lower",
                    a.ttft_p99_s, l.ttft_p99_s
                ),
            )
        },
    ));
    out.push(chat(
        "chat: affinity cache hit rate higher than both baselines",
        &|a, l, r| {
            (
                a.hit_rate > l.hit_rate && a.hit_rate > r.hit_rate,
                format!(
                    "affinity {:.1}%, least-queue {:.1}%, round-robin {:.1}%",
                    a.hit_rate * 100.0,
                    l.hit_rate * 100.0,
                    r.hit_rate * 100.0
                ),
            )
        },
    ));
    // No reuse: affinity no worse than least-queue (p99 TTFT within 5%) at every QPS.
    let name = "no-reuse: affinity p99 TTFT within 5% of least-queue (every QPS)";
    let mut details = Vec::new();
    let mut met = Some(true);
    let mut any = false;
    for r in rows
        .iter()
        .filter(|r| r.workload == "no-reuse" && r.policy == LQ)
    {
        let Some(a) = find(rows, "no-reuse", r.qps, AFF) else {
            met = None;
            details.push(format!("{} QPS: {AFF} did not run", r.qps));
            continue;
        };
        any = true;
        let ok = a.ttft_p99_s <= r.ttft_p99_s * 1.05;
        if !ok {
            met = met.map(|_| false);
        }
        details.push(format!(
            "{} QPS: {:.3} s vs {:.3} s{}",
            r.qps,
            a.ttft_p99_s,
            r.ttft_p99_s,
            if ok { "" } else { " (worse)" }
        ));
    }
    if !any && met == Some(true) {
        met = None;
        details.push("the no-reuse workload was not run".into());
    }
    out.push(Goal {
        name: name.into(),
        met,
        detail: details.join("; "),
    });
    out
}

pub fn render_goals(goals: &[Goal]) -> String {
    let mut s = String::from("Goals (issue 12):\n");
    for g in goals {
        let v = match g.met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "NOT EVALUATED",
        };
        let _ = writeln!(s, "  [{v}] {}\n        {}", g.name, g.detail);
    }
    s
}
