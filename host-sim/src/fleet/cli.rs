//! `host-sim fleet`: runs the sweep, prints the table and the goals, writes results.csv,
//! results.json, report.txt and ttft.png into `--out`.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context as _, Result};

use super::policy::PolicyKind;
use super::workload::Workload;
use super::{plot, report, sweep, Options};

const USAGE: &str = "usage: host-sim fleet [options]
  --wasm FILE              the filter (dist/llm_router.wasm)
  --out DIR                where results go (fleet-results)
  --servers N              simulated model servers (8)
  --qps LIST               arrival rates swept, comma-separated (16,20,24,28,32)
  --duration S             simulated seconds of arrivals per point (150)
  --warmup S               arrivals before this are not measured (30)
  --seeds LIST             seeds; results are pooled over them (1,2)
  --workloads LIST         chat,rag,no-reuse[,repeat] (chat,rag,no-reuse)
  --policies LIST          round-robin,least-queue,llm-router,affinity[,sticky]
  --interval-ms MS         sidecar scrape-and-push interval (500)
  --stale-after-ms MS      the filter's endpoints.stale_after_ms (2000)
  --workers N              filter worker VMs, requests alternate (2)
  --endpoints JSON         fields merged over the filter's endpoints config (both filter policies)
  --prefix JSON            endpoints.prefix of the affinity policy ({})
  GPU model: --prefill-tps N (10000) --step-base-ms X (18) --step-per-seq-ms X (0.25)
             --max-running N (48) --max-step-tokens N (4096) --kv-blocks N (8192)
             --block-tokens N (16)
  --check                  check every server's bookkeeping after every event (slow)";

fn list<T: FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    let v: Result<Vec<T>> = s
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            x.trim()
                .parse::<T>()
                .ok()
                .with_context(|| format!("{what}: {x:?}"))
        })
        .collect();
    let v = v?;
    if v.is_empty() {
        bail!("{what}: empty list");
    }
    Ok(v)
}

/// Parses the options (without the `fleet` word); returns them and the output directory.
pub fn parse(args: &[String]) -> Result<Option<(Options, PathBuf)>> {
    let mut o = Options::default();
    let mut out = PathBuf::from("fleet-results");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        let num = |v: String| -> Result<f64> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .with_context(|| format!("{a}: {v:?}"))
        };
        let int =
            |v: String| -> Result<u64> { v.parse::<u64>().with_context(|| format!("{a}: {v:?}")) };
        match a.as_str() {
            "--wasm" => o.wasm = PathBuf::from(value()?),
            "--out" => out = PathBuf::from(value()?),
            "--servers" => o.servers = int(value()?)? as usize,
            "--qps" => o.qps = list(&value()?, "--qps")?,
            "--duration" => o.duration_s = num(value()?)?,
            "--warmup" => o.warmup_s = num(value()?)?,
            "--seeds" => o.seeds = list(&value()?, "--seeds")?,
            "--workloads" => {
                o.workloads = value()?
                    .split(',')
                    .map(Workload::parse)
                    .collect::<Result<_>>()?
            }
            "--policies" => {
                o.policies = value()?
                    .split(',')
                    .map(PolicyKind::parse)
                    .collect::<Result<_>>()?
            }
            "--interval-ms" => o.push_interval_ms = int(value()?)?,
            "--stale-after-ms" => o.stale_after_ms = int(value()?)?,
            "--workers" => o.workers = int(value()?)? as usize,
            "--endpoints" => {
                o.endpoints = serde_json::from_str(&value()?).context("--endpoints")?
            }
            "--prefix" => o.prefix = serde_json::from_str(&value()?).context("--prefix")?,
            "--prefill-tps" => o.speed.prefill_tps = num(value()?)?,
            "--step-base-ms" => o.speed.step_base_ms = num(value()?)?,
            "--step-per-seq-ms" => o.speed.step_per_seq_ms = num(value()?)?,
            "--max-running" => o.speed.max_running = int(value()?)? as usize,
            "--max-step-tokens" => o.speed.max_step_tokens = int(value()?)? as u32,
            "--kv-blocks" => o.speed.kv_blocks = int(value()?)? as usize,
            "--block-tokens" => o.speed.block_tokens = int(value()?)? as u32,
            "--check" => o.check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    o.speed.validate()?;
    if o.servers == 0 || o.workers == 0 || o.push_interval_ms == 0 {
        bail!("--servers, --workers and --interval-ms must be > 0");
    }
    if !(o.duration_s > o.warmup_s && o.warmup_s >= 0.0) {
        bail!("--duration must be longer than --warmup");
    }
    if o.qps.iter().any(|q| *q <= 0.0) {
        bail!("--qps values must be > 0");
    }
    Ok(Some((o, out)))
}

/// Runs the subcommand; returns the exit code.
pub fn main(args: &[String]) -> Result<i32> {
    let Some((opts, out)) = parse(args)? else {
        return Ok(0);
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    println!(
        "fleet: {} servers, QPS {:?}, {} s per point ({} s warm-up), seeds {:?}, push every {} ms",
        opts.servers, opts.qps, opts.duration_s, opts.warmup_s, opts.seeds, opts.push_interval_ms
    );
    println!("       affinity: endpoints.prefix = {}", opts.prefix);
    let rows = sweep(&opts, &mut |l| println!("{l}"))?;
    let goals = report::goals(&rows);
    let text = format!("{}\n{}", report::table(&rows), report::render_goals(&goals));
    println!("\n{text}");
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    write("report.txt", text.as_bytes())?;
    write("results.csv", report::csv(&rows).as_bytes())?;
    let json = report::to_json(&rows, opts.params(), &goals);
    write(
        "results.json",
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    write("ttft.png", &plot::render(&rows)?)?;
    println!(
        "wrote {}/{{report.txt,results.csv,results.json,ttft.png}}",
        out.display()
    );
    Ok(0)
}
