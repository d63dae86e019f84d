//! The discrete-event loop: arrivals, server steps and sidecar pushes in simulated time (µs).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use anyhow::{bail, Result};

use super::policy::Policy;
use super::server::{Job, Progress, Server, Speed};
use super::workload::Request;

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub server: usize,
    pub cached_tokens: u32,
    pub first_us: Option<u64>,
    pub done_us: Option<u64>,
}

/// One policy's run over one arrival sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub outcomes: Vec<Outcome>,
    pub fallbacks: u64,
    pub evictions: u64,
    pub end_us: u64,
    /// Events processed (arrivals, steps, pushes).
    pub events: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Order at equal times: a step ends, then pushes, then arrivals.
    StepEnd(usize),
    Push,
    Arrive(usize),
}

/// Fleet parameters of a run.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub servers: usize,
    pub speed: Speed,
    pub push_interval_ms: u64,
    /// Check every server's bookkeeping after every event (the smoke run).
    pub check: bool,
}

struct Loop<'a> {
    reqs: &'a [Request],
    servers: Vec<Server>,
    heap: BinaryHeap<Reverse<(u64, Ev)>>,
    out: Vec<Outcome>,
    progress: Vec<Progress>,
}

impl Loop<'_> {
    fn step(&mut self, s: usize, now: u64) {
        if let Some(server) = self.servers.get_mut(s) {
            if let Some(d) = server.start_step(&mut self.progress) {
                self.heap.push(Reverse((now + d, Ev::StepEnd(s))));
            }
        }
    }

    fn apply(&mut self, now: u64, policy: &mut dyn Policy) -> Result<()> {
        for p in std::mem::take(&mut self.progress) {
            match p {
                Progress::Admitted { id, cached_tokens } => {
                    if let Some(o) = self.out.get_mut(id) {
                        o.cached_tokens = cached_tokens;
                    }
                }
                Progress::FirstToken { id } => {
                    let Some(o) = self.out.get_mut(id) else {
                        bail!("unknown request {id}")
                    };
                    if o.first_us.replace(now).is_some() {
                        bail!("request {id}: a second first token");
                    }
                }
                Progress::Finished { id } => {
                    let Some(o) = self.out.get_mut(id) else {
                        bail!("unknown request {id}")
                    };
                    if o.first_us.is_none() || o.done_us.replace(now).is_some() {
                        bail!("request {id}: finished twice or before its first token");
                    }
                    if let Some(r) = self.reqs.get(id) {
                        policy.done(now, r)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs `reqs` (sorted by arrival, ids = positions) through a fleet under `policy`.
pub fn simulate(reqs: &[Request], fleet: &Fleet, policy: &mut dyn Policy) -> Result<Run> {
    fleet.speed.validate()?;
    if fleet.servers == 0 || fleet.push_interval_ms == 0 {
        bail!("servers and push interval must be > 0");
    }
    let mut lp = Loop {
        reqs,
        servers: (0..fleet.servers)
            .map(|_| Server::new(fleet.speed.clone()))
            .collect(),
        heap: BinaryHeap::new(),
        out: vec![Outcome::default(); reqs.len()],
        progress: Vec::new(),
    };
    for (i, r) in reqs.iter().enumerate() {
        if r.id != i {
            bail!("request ids must be their positions");
        }
        lp.heap.push(Reverse((r.arrival_us, Ev::Arrive(i))));
    }
    lp.heap.push(Reverse((0, Ev::Push)));
    let interval = fleet.push_interval_ms * 1000;
    let (mut now, mut events, mut arrived) = (0u64, 0u64, 0usize);
    while let Some(Reverse((t, ev))) = lp.heap.pop() {
        if t < now {
            bail!("time went back: {t} < {now}");
        }
        now = t;
        events += 1;
        match ev {
            Ev::Arrive(i) => {
                arrived += 1;
                let Some(r) = reqs.get(i) else { continue };
                let s = policy.pick(now, r, &lp.servers)?;
                let Some(server) = lp.servers.get_mut(s) else {
                    bail!("policy picked server {s} of {}", fleet.servers)
                };
                server.enqueue(Job {
                    id: i,
                    prompt_tokens: r.prompt_tokens,
                    output_tokens: r.output_tokens,
                    chain: r.chain.clone(),
                })?;
                if let Some(o) = lp.out.get_mut(i) {
                    o.server = s;
                }
                if !server.is_stepping() {
                    lp.step(s, now);
                }
            }
            Ev::StepEnd(s) => {
                if let Some(server) = lp.servers.get_mut(s) {
                    server.end_step(&mut lp.progress);
                }
                lp.step(s, now);
            }
            Ev::Push => {
                let loads: Vec<_> = lp.servers.iter().map(Server::load).collect();
                policy.push(now, &loads)?;
                let busy = lp.servers.iter().any(|s| s.is_stepping());
                if arrived < reqs.len() || busy {
                    lp.heap.push(Reverse((now + interval, Ev::Push)));
                }
            }
        }
        lp.apply(now, policy)?;
        if fleet.check {
            for (k, s) in lp.servers.iter().enumerate() {
                s.check()
                    .map_err(|e| anyhow::anyhow!("server {k} at {now} us: {e}"))?;
            }
        }
    }
    if let Some((i, _)) = lp.out.iter().enumerate().find(|(_, o)| o.done_us.is_none()) {
        bail!("request {i} never finished");
    }
    if policy.open_streams() != 0 {
        bail!(
            "{} filter streams still open at the end",
            policy.open_streams()
        );
    }
    Ok(Run {
        outcomes: lp.out,
        fallbacks: policy.fallbacks(),
        evictions: lp.servers.iter().map(|s| s.evictions).sum(),
        end_us: now,
        events,
    })
}
