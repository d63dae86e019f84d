//! Prometheus text exposition format (version 0.0.4, and the OpenMetrics text lines that
//! model servers emit): just enough to read gauges. Pure.
//!
//! Handled: `# HELP` / `# TYPE` / other comments, blank lines, labels (with escaped quotes,
//! backslashes, newlines, commas and braces inside values, trailing comma), optional timestamps,
//! OpenMetrics exemplars after the value, `NaN`, `+Inf` / `-Inf`, scientific notation.
//! A line that does not parse is skipped and counted, not fatal: one odd line must not make an
//! otherwise healthy endpoint unhealthy.

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Lines that were neither comments, blank, nor valid samples.
    pub skipped_lines: usize,
}

/// How several series of one metric (e.g. one per `model_name` or per engine) are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Counts (queued / running requests): add the series.
    Sum,
    /// Fractions (KV-cache usage): the fullest series.
    Max,
}

impl Exposition {
    /// Combines the non-NaN samples named `name`. `None` when the metric has no such sample.
    pub fn aggregate(&self, name: &str, how: Aggregate) -> Option<f64> {
        let mut values = self
            .samples
            .iter()
            .filter(|s| s.name == name && !s.value.is_nan())
            .map(|s| s.value);
        let first = values.next()?;
        let combined = match how {
            Aggregate::Sum => values.fold(first, |acc, v| acc + v),
            Aggregate::Max => values.fold(first, f64::max),
        };
        // +Inf plus -Inf is NaN: no usable value.
        if combined.is_nan() {
            None
        } else {
            Some(combined)
        }
    }

    /// The first of `names` that has a usable value, with that value.
    pub fn first_present<'a>(&self, names: &'a [String], how: Aggregate) -> Option<(&'a str, f64)> {
        names
            .iter()
            .find_map(|n| self.aggregate(n, how).map(|v| (n.as_str(), v)))
    }
}

pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_sample(line) {
            Some(sample) => out.samples.push(sample),
            None => out.skipped_lines += 1,
        }
    }
    out
}

fn parse_sample(line: &str) -> Option<Sample> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() && is_name_byte(bytes[i], i == 0) {
        i += 1;
    }
    if i == 0 {
        return None;
    }
    let name = line[..i].to_string();
    let mut labels = Vec::new();
    let mut rest = &line[i..];
    if let Some(after_brace) = rest.trim_start().strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    } else if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    // Anything after the value (a timestamp, an OpenMetrics exemplar) is not needed.
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn is_name_byte(b: u8, first: bool) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || (!first && b.is_ascii_digit())
}

/// Parses `name="value", ...}` (the opening brace already consumed); returns the labels and the
/// text after the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if i == 0 || bytes[0].is_ascii_digit() {
            return None;
        }
        let label = s[..i].to_string();
        s = s[i..].trim_start().strip_prefix('=')?.trim_start();
        s = s.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (pos, c) = chars.next()?;
            match c {
                '"' => break pos,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        };
        labels.push((label, value));
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return None;
        }
    }
}

fn parse_value(token: &str) -> Option<f64> {
    match token {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => token.parse::<f64>().ok(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The shape of a real vLLM (V1 engine) /metrics page, abridged.
    const VLLM: &str = r#"# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
python_gc_objects_collected_total{generation="1"} 1.2e+03
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4213483146067416
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.234567e+06
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 42.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 42.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.5
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",gpu_memory_utilization="0.9",num_gpu_blocks="None"} 1.0
"#;

    #[test]
    fn vllm_page() {
        let e = parse(VLLM);
        assert_eq!(e.skipped_lines, 0);
        assert_eq!(
            e.aggregate("vllm:num_requests_running", Aggregate::Sum),
            Some(3.0)
        );
        assert_eq!(
            e.aggregate("vllm:num_requests_waiting", Aggregate::Sum),
            Some(7.0)
        );
        assert_eq!(
            e.aggregate("vllm:kv_cache_usage_perc", Aggregate::Max),
            Some(0.4213483146067416)
        );
        assert_eq!(
            e.aggregate("vllm:gpu_cache_usage_perc", Aggregate::Max),
            None
        );
        assert_eq!(
            e.aggregate("vllm:prompt_tokens_total", Aggregate::Sum),
            Some(1_234_567.0)
        );
        assert_eq!(
            e.aggregate("python_gc_objects_collected_total", Aggregate::Sum),
            Some(13_545.0)
        );
        let bucket = e
            .samples
            .iter()
            .find(|s| s.name == "vllm:time_to_first_token_seconds_bucket" && s.value == 42.0)
            .unwrap();
        assert_eq!(
            bucket.labels,
            vec![
                ("engine".to_string(), "0".to_string()),
                ("le".to_string(), "+Inf".to_string()),
                (
                    "model_name".to_string(),
                    "meta-llama/Llama-3.1-8B-Instruct".to_string()
                ),
            ]
        );
        let names: Vec<String> = vec![
            "vllm:kv_cache_usage_perc".into(),
            "vllm:gpu_cache_usage_perc".into(),
        ];
        assert_eq!(
            e.first_present(&names, Aggregate::Max),
            Some(("vllm:kv_cache_usage_perc", 0.4213483146067416))
        );
    }

    #[test]
    fn older_vllm_kv_name_is_the_fallback() {
        let e = parse("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n");
        let names: Vec<String> = vec![
            "vllm:kv_cache_usage_perc".into(),
            "vllm:gpu_cache_usage_perc".into(),
        ];
        assert_eq!(
            e.first_present(&names, Aggregate::Max),
            Some(("vllm:gpu_cache_usage_perc", 0.5))
        );
    }

    #[test]
    fn several_series_are_summed_or_maxed() {
        let e = parse(
            "vllm:num_requests_waiting{model_name=\"a\"} 2\n\
             vllm:num_requests_waiting{model_name=\"b\"} 5\n\
             vllm:kv_cache_usage_perc{engine=\"0\"} 0.25\n\
             vllm:kv_cache_usage_perc{engine=\"1\"} 0.75\n",
        );
        assert_eq!(
            e.aggregate("vllm:num_requests_waiting", Aggregate::Sum),
            Some(7.0)
        );
        assert_eq!(
            e.aggregate("vllm:kv_cache_usage_perc", Aggregate::Max),
            Some(0.75)
        );
    }

    #[test]
    fn special_values() {
        let e = parse(
            "a NaN\nb +Inf\nc -Inf\nd 1.5e-3\ne 2E+2\nf -0\ng 17 1700000000000\nh{x=\"y\"} NaN\nh{x=\"z\"} 4\n",
        );
        assert_eq!(e.skipped_lines, 0);
        assert_eq!(e.aggregate("a", Aggregate::Sum), None, "NaN only: no value");
        assert_eq!(e.aggregate("b", Aggregate::Sum), Some(f64::INFINITY));
        assert_eq!(e.aggregate("c", Aggregate::Sum), Some(f64::NEG_INFINITY));
        assert_eq!(e.aggregate("d", Aggregate::Sum), Some(0.0015));
        assert_eq!(e.aggregate("e", Aggregate::Sum), Some(200.0));
        assert_eq!(e.aggregate("f", Aggregate::Sum), Some(0.0));
        assert_eq!(
            e.aggregate("g", Aggregate::Sum),
            Some(17.0),
            "timestamp ignored"
        );
        assert_eq!(
            e.aggregate("h", Aggregate::Sum),
            Some(4.0),
            "NaN series ignored"
        );
    }

    #[test]
    fn tricky_labels() {
        let e = parse(concat!(
            "m{path=\"/a b\",msg=\"say \\\"hi\\\", {ok}\",nl=\"x\\ny\",bs=\"c:\\\\d\",} 1\n",
            "m { a = \"1\" } 2\n",
            "m{} 3\n",
            "m{a=\"1\"} 4 # {trace_id=\"abc\"} 1.0 1700000000\n",
        ));
        assert_eq!(e.skipped_lines, 0, "{e:?}");
        assert_eq!(e.samples.len(), 4);
        assert_eq!(
            e.samples[0].labels,
            vec![
                ("path".to_string(), "/a b".to_string()),
                ("msg".to_string(), "say \"hi\", {ok}".to_string()),
                ("nl".to_string(), "x\ny".to_string()),
                ("bs".to_string(), "c:\\d".to_string()),
            ]
        );
        assert_eq!(e.aggregate("m", Aggregate::Sum), Some(10.0));
    }

    #[test]
    fn malformed_lines_are_skipped_not_fatal() {
        let e = parse(
            "ok 1\n{only=\"labels\"} 2\nbad{a=\"1\" 3\nnovalue\nx{a=1} 4\nname abc\n9starts_with_digit 5\n\r\n# EOF\n",
        );
        assert_eq!(e.samples.len(), 1);
        assert_eq!(e.skipped_lines, 6);
        assert_eq!(e.aggregate("ok", Aggregate::Sum), Some(1.0));
    }

    #[test]
    fn crlf_and_tabs() {
        let e = parse("# TYPE q gauge\r\nq\t3\r\nq{a=\"b\"}\t4\r\n");
        assert_eq!(e.aggregate("q", Aggregate::Sum), Some(7.0));
    }
}
