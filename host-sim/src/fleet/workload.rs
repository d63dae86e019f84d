//! Seeded workloads: the arrival sequence every policy of a run gets, with real text.
//!
//! Text is made of pseudo-words from a fixed vocabulary; the simulated servers tokenise one
//! word as one token, and each message starts with a role token (a chat template's header).
//! A prompt ends with the assistant's role token (the generation prompt), so a conversation's
//! next turn starts with exactly the tokens of the previous prompt and its answer.

use std::sync::{Arc, OnceLock};

use anyhow::{bail, Result};

use crate::fuzz::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Multi-turn chat: sessions sharing a few system prompts, history growing each turn.
    Chat,
    /// Retrieval-augmented questions over a set of shared documents (skewed popularity).
    Rag,
    /// Control: every prompt distinct from its first token.
    NoReuse,
    /// A handful of prompts repeated (the smoke run's cache check).
    Repeat,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Chat => "chat",
            Workload::Rag => "rag",
            Workload::NoReuse => "no-reuse",
            Workload::Repeat => "repeat",
        }
    }

    pub fn parse(s: &str) -> Result<Workload> {
        Ok(match s {
            "chat" => Workload::Chat,
            "rag" => Workload::Rag,
            "no-reuse" | "noreuse" => Workload::NoReuse,
            "repeat" => Workload::Repeat,
            _ => bail!("unknown workload {s:?} (chat, rag, no-reuse, repeat)"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    fn token(self) -> u32 {
        match self {
            Role::System => 0,
            Role::User => 1,
            Role::Assistant => 2,
        }
    }
}

/// Word tokens start here (below: role tokens).
const FIRST_WORD: u32 = 16;
const VOCAB: usize = 8192;

/// The fixed vocabulary (the same in every run).
fn vocab() -> &'static [String] {
    static V: OnceLock<Vec<String>> = OnceLock::new();
    V.get_or_init(|| {
        const SYL: [&str; 24] = [
            "ka", "lo", "mi", "ren", "to", "sa", "vel", "nu", "dor", "pi", "gan", "te", "ri",
            "mos", "fa", "ul", "ber", "shi", "co", "dan", "el", "tri", "po", "zen",
        ];
        let mut r = Rng::new(0x5EED);
        (0..VOCAB)
            .map(|_| {
                let n = 1 + r.below_usize(3);
                (0..n).map(|_| *r.pick(&SYL)).collect::<String>()
            })
            .collect()
    })
}

/// The text of word tokens.
pub fn text(tokens: &[u32]) -> String {
    let v = vocab();
    let mut s = String::with_capacity(tokens.len() * 7);
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let w = (t.saturating_sub(FIRST_WORD) as usize) % VOCAB;
        s.push_str(v.get(w).map_or("x", String::as_str));
    }
    s
}

/// One request of the arrival sequence.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: usize,
    pub arrival_us: u64,
    pub messages: Vec<(Role, Arc<[u32]>)>,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Block hashes of the full blocks of prompt ++ output.
    pub chain: Arc<[u64]>,
    /// Conversation or document it belongs to (the sticky policy's key); distinct otherwise.
    pub group: u64,
}

impl Request {
    /// The OpenAI chat request body the filter sees.
    pub fn body(&self) -> Vec<u8> {
        let messages: Vec<serde_json::Value> = self
            .messages
            .iter()
            .map(|(r, w)| serde_json::json!({"role": r.name(), "content": text(w)}))
            .collect();
        let b = serde_json::json!({
            "model": "fleet-model",
            "messages": messages,
            "max_tokens": self.output_tokens,
        });
        serde_json::to_vec(&b).unwrap_or_default()
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The hash chain over full blocks of `tokens`: each block's hash covers its parent's.
pub fn block_chain(tokens: &[u32], block: u32) -> Vec<u64> {
    let b = block.max(1) as usize;
    let mut parent = 0x243F_6A88_85A3_08D3u64;
    tokens
        .chunks_exact(b)
        .map(|c| {
            let mut h = parent;
            for t in c {
                h = mix(h ^ u64::from(*t)).wrapping_add(0x9E37_79B9_7F4A_7C15);
            }
            parent = h;
            h
        })
        .collect()
}

/// The prompt tokens of a message list (role token + words per message, then the generation
/// prompt).
pub fn prompt_tokens(messages: &[(Role, Arc<[u32]>)]) -> Vec<u32> {
    let mut out = Vec::new();
    for (r, w) in messages {
        out.push(r.token());
        out.extend_from_slice(w);
    }
    out.push(Role::Assistant.token());
    out
}

fn uniform(r: &mut Rng) -> f64 {
    (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn exp_us(r: &mut Rng, mean_s: f64) -> u64 {
    (-(1.0 - uniform(r)).ln() * mean_s * 1e6) as u64
}

fn words(r: &mut Rng, lo: u64, hi: u64) -> Arc<[u32]> {
    let n = r.range(lo, hi);
    (0..n)
        .map(|_| FIRST_WORD + r.below(VOCAB as u64) as u32)
        .collect()
}

/// Parameters of a generated arrival sequence.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub workload: Workload,
    pub qps: f64,
    pub duration_s: f64,
    pub seed: u64,
    pub block_tokens: u32,
}

impl Spec {
    /// Seconds of arrivals before the nominal duration: a chat run starts with sessions
    /// already under way (their earlier turns are requests too). Arrival times include it;
    /// measurements skip it.
    pub fn preroll_s(&self) -> f64 {
        match self.workload {
            Workload::Chat => CHAT_PREROLL_S,
            _ => 0.0,
        }
    }
}

/// Chat: turns per session (uniform), seconds between a session's turns (mean, exponential
/// past a floor).
const TURNS: (u64, u64) = (4, 12);
const THINK_S: (f64, f64) = (8.0, 6.0);
/// Chat: seconds of arrivals before the nominal start (not measured; see [`Spec::preroll_s`]).
const CHAT_PREROLL_S: f64 = 120.0;
/// RAG: documents (more than one server's cache holds), Zipf(1) popularity.
const DOCS: usize = 256;

/// A request before ids: arrival, messages, answer, group.
type Draft = (u64, Vec<(Role, Arc<[u32]>)>, Arc<[u32]>, u64);

/// Generates the arrival sequence, sorted by arrival, ids in that order.
pub fn generate(spec: &Spec) -> Result<Vec<Request>> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(spec.qps) || !positive(spec.duration_s) {
        bail!("QPS and duration must be > 0");
    }
    let mut r = Rng::new(spec.seed ^ (spec.workload as u64).wrapping_mul(0x1000_0001));
    let end = (spec.duration_s * 1e6) as u64;
    let mut raw: Vec<Draft> = Vec::new();
    match spec.workload {
        Workload::Chat => {
            let systems: Vec<Arc<[u32]>> = (0..4).map(|_| words(&mut r, 1000, 2000)).collect();
            let mean_turns = (TURNS.0 + TURNS.1) as f64 / 2.0;
            let rate = spec.qps / mean_turns;
            // Sessions start during the pre-roll too (all their turns are requests), so the
            // load is about steady and no history is cold once the pre-roll is over.
            let pre = (CHAT_PREROLL_S * 1e6) as u64;
            let mut t = 0u64;
            let mut session = 0u64;
            while t < end + pre {
                t += exp_us(&mut r, 1.0 / rate);
                session += 1;
                let sys = r.pick(&systems).clone();
                let turns = r.range(TURNS.0, TURNS.1);
                let mut history: Vec<(Role, Arc<[u32]>)> = vec![(Role::System, sys)];
                let mut at = t;
                for _ in 0..turns {
                    history.push((Role::User, words(&mut r, 100, 400)));
                    let answer = words(&mut r, 100, 300);
                    if at < end + pre {
                        raw.push((at, history.clone(), answer.clone(), session));
                    }
                    history.push((Role::Assistant, answer));
                    at += (THINK_S.0 * 1e6) as u64 + exp_us(&mut r, THINK_S.1);
                }
            }
        }
        Workload::Rag => {
            let sys: Arc<[u32]> = words(&mut r, 100, 200);
            let docs: Vec<Arc<[u32]>> = (0..DOCS).map(|_| words(&mut r, 800, 2500)).collect();
            let cdf = zipf_cdf(docs.len(), 1.0);
            let mut t = exp_us(&mut r, 1.0 / spec.qps);
            while t < end {
                let u = uniform(&mut r);
                let d = cdf.partition_point(|c| *c < u).min(docs.len() - 1);
                let q = words(&mut r, 20, 60);
                let mut user: Vec<u32> = docs[d].to_vec();
                user.extend_from_slice(&q);
                let msgs = vec![(Role::System, sys.clone()), (Role::User, user.into())];
                raw.push((t, msgs, words(&mut r, 50, 250), d as u64));
                t += exp_us(&mut r, 1.0 / spec.qps);
            }
        }
        Workload::NoReuse | Workload::Repeat => {
            let fixed: Vec<Arc<[u32]>> = (0..8).map(|_| words(&mut r, 1000, 2000)).collect();
            let mut t = exp_us(&mut r, 1.0 / spec.qps);
            let mut n = 0u64;
            while t < end {
                n += 1;
                let (prompt, out, group) = if spec.workload == Workload::Repeat {
                    let k = r.below_usize(fixed.len());
                    (fixed[k].clone(), words(&mut r, 20, 60), k as u64)
                } else {
                    (
                        words(&mut r, 500, 3000),
                        words(&mut r, 50, 300),
                        1_000_000 + n,
                    )
                };
                raw.push((t, vec![(Role::User, prompt)], out, group));
                t += exp_us(&mut r, 1.0 / spec.qps);
            }
        }
    }
    raw.sort_by_key(|x| x.0);
    Ok(raw
        .into_iter()
        .enumerate()
        .map(|(id, (arrival_us, messages, answer, group))| {
            let mut tokens = prompt_tokens(&messages);
            let prompt = tokens.len() as u32;
            tokens.extend_from_slice(&answer);
            Request {
                id,
                arrival_us,
                chain: block_chain(&tokens, spec.block_tokens).into(),
                messages,
                prompt_tokens: prompt,
                output_tokens: answer.len() as u32,
                group,
            }
        })
        .collect())
}

fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let w: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    w.iter()
        .map(|x| {
            acc += x / total;
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(w: Workload) -> Spec {
        Spec {
            workload: w,
            qps: 5.0,
            duration_s: 60.0,
            seed: 3,
            block_tokens: 16,
        }
    }

    #[test]
    fn a_chat_turn_starts_with_the_previous_turn_and_its_answer() {
        let reqs = generate(&spec(Workload::Chat)).unwrap();
        let mut by_group: std::collections::BTreeMap<u64, Vec<&Request>> = Default::default();
        for q in &reqs {
            by_group.entry(q.group).or_default().push(q);
        }
        let (prev, next) = by_group
            .values()
            .find(|v| v.len() >= 2)
            .map(|v| (v[0], v[1]))
            .unwrap();
        // The previous prompt ++ its answer is a prefix of the next prompt, block for block.
        let shared = (prev.prompt_tokens + prev.output_tokens) / 16;
        assert!(shared as usize <= next.chain.len());
        assert_eq!(prev.chain[..], next.chain[..shared as usize]);
        assert!(next.prompt_tokens > prev.prompt_tokens + prev.output_tokens);
        assert!(reqs.windows(2).all(|w| w[0].arrival_us <= w[1].arrival_us));
        // After the pre-roll the rate is the one asked for.
        let pre = (spec(Workload::Chat).preroll_s() * 1e6) as u64;
        let rate = reqs.iter().filter(|q| q.arrival_us >= pre).count() as f64 / 60.0;
        assert!((3.0..7.0).contains(&rate), "{rate} req/s for 5 QPS");
    }

    #[test]
    fn no_reuse_prompts_share_no_block_and_seeds_reproduce() {
        let reqs = generate(&spec(Workload::NoReuse)).unwrap();
        let mut seen = std::collections::HashSet::new();
        for q in &reqs {
            assert!(
                seen.insert(q.chain[0]),
                "request {} shares its first block",
                q.id
            );
        }
        let again = generate(&spec(Workload::NoReuse)).unwrap();
        assert_eq!(
            reqs.iter().map(|q| q.chain.clone()).collect::<Vec<_>>(),
            again.iter().map(|q| q.chain.clone()).collect::<Vec<_>>()
        );
        let body = serde_json::from_slice::<serde_json::Value>(&reqs[0].body()).unwrap();
        assert_eq!(body["messages"][0]["role"], "user");
        let words = body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .split(' ')
            .count();
        assert_eq!(words as u32 + 2, reqs[0].prompt_tokens);
    }
}
