//! Metrics shared by every VM of one host, named exactly as the guest defines them, plus the
//! two renderings a test or an operator compares against: Envoy's `/stats` text and Prometheus
//! text after Istio-style tag extraction (`name;label=.=value;.;`).

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn from_abi(v: i32) -> Option<MetricKind> {
        match v {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One metric as the test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub kind: MetricKind,
    /// Counter or gauge value; for a histogram the number of recorded samples.
    pub value: i64,
    /// Histogram samples in recording order (empty for counters and gauges).
    pub samples: Vec<u64>,
}

impl Metric {
    /// Sum of histogram samples (0 for counters and gauges).
    pub fn sum(&self) -> u64 {
        self.samples.iter().sum()
    }

    /// The base name before Istio-style tags (`a;k=.=v;.;` -> `a`).
    pub fn base_name(&self) -> &str {
        split_tags(&self.name).0
    }

    /// Tags embedded in the name with the `;k=.=v;.;` convention, in order.
    pub fn tags(&self) -> Vec<(String, String)> {
        split_tags(&self.name).1
    }
}

/// Splits `base;k1=.=v1;.;k2=.=v2;.;` into the base name and its tags.
pub fn split_tags(name: &str) -> (&str, Vec<(String, String)>) {
    let Some(pos) = name.find(';') else {
        return (name, Vec::new());
    };
    let base = &name[..pos];
    let mut tags = Vec::new();
    let mut rest = &name[pos..];
    while let Some(r) = rest.strip_prefix(';') {
        let Some(eq) = r.find("=.=") else { break };
        let key = &r[..eq];
        let after = &r[eq + 3..];
        let Some(end) = after.find(";.;") else { break };
        tags.push((key.to_string(), after[..end].to_string()));
        rest = &after[end + 2..];
    }
    (base, tags)
}

#[derive(Debug, Default)]
pub struct MetricStore {
    pub metrics: BTreeMap<String, Metric>,
    /// `proxy_define_metric` calls so far, all VMs (a guest that defines per request shows here).
    pub define_calls: u64,
}

impl MetricStore {
    pub fn define(&mut self, kind: MetricKind, name: &str) {
        self.define_calls += 1;
        self.metrics
            .entry(name.to_string())
            .or_insert_with(|| Metric {
                name: name.to_string(),
                kind,
                value: 0,
                samples: Vec::new(),
            });
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Metric> {
        self.metrics.get_mut(name)
    }

    /// Envoy `/stats` text: `wasmcustom.<name>: <value>` for counters and gauges, and
    /// `wasmcustom.<name>: P0(x,x) P25(x,x) ...` for histograms, sorted by name.
    pub fn render_envoy(&self, prefix: bool) -> String {
        let mut out = String::new();
        for m in self.metrics.values() {
            let name = if prefix {
                format!("wasmcustom.{}", m.name)
            } else {
                m.name.clone()
            };
            match m.kind {
                MetricKind::Counter | MetricKind::Gauge => {
                    out.push_str(&format!("{name}: {}\n", m.value));
                }
                MetricKind::Histogram => {
                    if m.samples.is_empty() {
                        out.push_str(&format!("{name}: No recorded values\n"));
                        continue;
                    }
                    let mut sorted = m.samples.clone();
                    sorted.sort_unstable();
                    let parts: Vec<String> =
                        [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0]
                            .iter()
                            .map(|q| {
                                let v = quantile(&sorted, *q);
                                format!("P{q}({v},{v})")
                            })
                            .collect();
                    out.push_str(&format!("{name}: {}\n", parts.join(" ")));
                }
            }
        }
        out
    }

    /// Prometheus text after tag extraction: `base{k="v",...} value`; histograms as
    /// `_count` and `_sum` lines.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for m in self.metrics.values() {
            let (base, tags) = split_tags(&m.name);
            let labels = if tags.is_empty() {
                String::new()
            } else {
                let inner: Vec<String> = tags
                    .iter()
                    .map(|(k, v)| {
                        format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
                    })
                    .collect();
                format!("{{{}}}", inner.join(","))
            };
            match m.kind {
                MetricKind::Counter | MetricKind::Gauge => {
                    out.push_str(&format!("{base}{labels} {}\n", m.value));
                }
                MetricKind::Histogram => {
                    out.push_str(&format!("{base}_count{labels} {}\n", m.samples.len()));
                    out.push_str(&format!("{base}_sum{labels} {}\n", m.sum()));
                }
            }
        }
        out
    }
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((q / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_split() {
        let (base, tags) = split_tags("llm_router_requests_total;tier=.=small;.;model=.=m1;.;");
        assert_eq!(base, "llm_router_requests_total");
        assert_eq!(
            tags,
            vec![
                ("tier".to_string(), "small".to_string()),
                ("model".to_string(), "m1".to_string())
            ]
        );
        assert_eq!(split_tags("plain").0, "plain");
    }
}
