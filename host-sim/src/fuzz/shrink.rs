//! Minimises a failure: fewer preceding cases, then a smaller failing case (fewer headers,
//! shorter values, smaller body, no response...), keeping the same kind of violation.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::case::{Bytes, Cancel, Case};
use super::{Failure, Session, Target};

struct Shrinker<'t> {
    target: &'t Target,
    seed: u64,
    kind: String,
    attempts: usize,
    max_attempts: usize,
    deadline: Instant,
    found: String,
}

impl Shrinker<'_> {
    fn exhausted(&self) -> bool {
        self.attempts >= self.max_attempts || Instant::now() >= self.deadline
    }

    /// Runs `seq`; if a violation of the same kind occurs, returns the sequence cut after it
    /// and the violation.
    fn run(&mut self, seq: &[Case]) -> Result<Option<(Vec<Case>, String)>> {
        self.attempts += 1;
        let mut session = Session::new(self.target, self.seed)?;
        for (i, c) in seq.iter().enumerate() {
            if let Err(v) = session.step(c) {
                if v.kind == self.kind {
                    return Ok(Some((seq[..=i].to_vec(), v.to_string())));
                }
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Like `run`, remembering the violation as the one found.
    fn fails(&mut self, seq: &[Case]) -> Result<Option<Vec<Case>>> {
        Ok(self.run(seq)?.map(|(s, found)| {
            self.found = found;
            s
        }))
    }

    fn history(&mut self, mut seq: Vec<Case>) -> Result<Vec<Case>> {
        // Keep only the last k cases, k growing.
        let mut k = 1;
        while k < seq.len() && !self.exhausted() {
            if let Some(s) = self.fails(&seq[seq.len() - k..])? {
                seq = s;
                break;
            }
            k *= 2;
        }
        // Then drop single earlier cases.
        let mut i = 0;
        while i + 1 < seq.len() && !self.exhausted() {
            let mut cand = seq.clone();
            cand.remove(i);
            match self.fails(&cand)? {
                Some(s) => seq = s,
                None => i += 1,
            }
        }
        Ok(seq)
    }

    fn case(&mut self, mut seq: Vec<Case>) -> Result<Vec<Case>> {
        'outer: while !self.exhausted() {
            let Some(last) = seq.last().cloned() else {
                break;
            };
            for cand in candidates(&last) {
                if self.exhausted() {
                    break 'outer;
                }
                let mut s = seq.clone();
                let n = s.len();
                s[n - 1] = cand;
                if let Some((s, found)) = self.run(&s)? {
                    if s.len() == n {
                        seq = s;
                        self.found = found;
                        continue 'outer;
                    }
                }
            }
            break;
        }
        Ok(seq)
    }
}

fn halves(b: &[u8]) -> Vec<Vec<u8>> {
    if b.is_empty() {
        return Vec::new();
    }
    let mut out = vec![Vec::new()];
    let mut size = b.len() / 2;
    while size >= 1 && out.len() < 24 {
        let mut at = 0;
        while at < b.len() && out.len() < 24 {
            let mut v = b[..at].to_vec();
            v.extend_from_slice(&b[(at + size).min(b.len())..]);
            out.push(v);
            at += size;
        }
        size /= 2;
    }
    out
}

/// Simpler variants of a case, most drastic first.
fn candidates(c: &Case) -> Vec<Case> {
    let mut out = Vec::new();
    let mut push = |f: &dyn Fn(&mut Case)| {
        let mut d = c.clone();
        f(&mut d);
        if d != *c {
            out.push(d);
        }
    };
    push(&|d| d.response = None);
    push(&|d| d.cancel = Cancel::Never);
    push(&|d| d.trailers = None);
    push(&|d| d.cuts.clear());
    push(&|d| d.advance_ms = 0);
    push(&|d| d.worker = 0);
    push(&|d| d.headers.clear());
    for i in 0..c.headers.len() {
        push(&|d| {
            d.headers.remove(i);
        });
    }
    for i in 0..c.headers.len() {
        for v in halves(&c.headers[i].1 .0).into_iter().take(6) {
            push(&|d| d.headers[i].1 = Bytes(v.clone()));
        }
        // Header names stay non-empty (Envoy's codecs reject empty names).
        for v in halves(&c.headers[i].0 .0).into_iter().skip(1).take(4) {
            push(&|d| d.headers[i].0 = Bytes(v.clone()));
        }
    }
    for b in halves(&c.body.0) {
        push(&|d| d.body = Bytes(b.clone()));
    }
    push(&|d| d.path = Bytes::from("/"));
    for p in halves(&c.path.0).into_iter().skip(1).take(8) {
        if p.starts_with(b"/") {
            push(&|d| d.path = Bytes(p.clone()));
        }
    }
    if let Some(r) = &c.response {
        push(&|d| {
            if let Some(r) = d.response.as_mut() {
                r.headers.clear();
                r.cuts.clear();
                r.trailers = None;
            }
        });
        for i in 0..r.headers.len() {
            push(&|d| {
                if let Some(r) = d.response.as_mut() {
                    r.headers.remove(i);
                }
            });
        }
        for b in halves(&r.body.0) {
            push(&|d| {
                if let Some(r) = d.response.as_mut() {
                    r.body = Bytes(b.clone());
                }
            });
        }
    }
    out
}

/// Minimises `f` within `max_attempts` replays and `budget` time. The result still fails with
/// the same kind of violation (at worst it is `f` itself).
pub fn shrink(
    target: &Target,
    f: &Failure,
    max_attempts: usize,
    budget: Duration,
) -> Result<Failure> {
    let mut s = Shrinker {
        target,
        seed: f.seed,
        kind: f.kind.clone(),
        attempts: 0,
        max_attempts,
        deadline: Instant::now() + budget,
        found: f.found.clone(),
    };
    let mut seq = f.history.clone();
    seq.push(f.case.clone());
    if s.fails(&seq)?.is_none() {
        // Not reproducible on fresh hosts: keep it as it was found.
        return Ok(f.clone());
    }
    let seq = s.history(seq)?;
    let mut seq = s.case(seq)?;
    let Some(case) = seq.pop() else {
        return Ok(f.clone());
    };
    Ok(Failure {
        found: s.found,
        kind: f.kind.clone(),
        seed: f.seed,
        index: f.index,
        history: seq,
        case,
    })
}
