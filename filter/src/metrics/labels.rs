//! The one check of configured strings that become metric labels (no imports of the
//! configuration: `config` validates with it, `metrics` builds labels from the validated config).

/// Longest label value accepted from the configuration.
pub const MAX_LABEL_VALUE: usize = 256;

/// Why `value` cannot be a label value (`None`: it can). Labels are embedded in the stat name
/// as `;name=.=value;.;` and cut out again by Envoy's tag regexes, so a value must not contain
/// the delimiters (`;`, `=`, hence `.=`), and it must read the same in Prometheus' text format
/// and in a header: printable ASCII, no spaces, quotes or backslashes, bounded length. The one
/// check for every configured string that becomes a label (tiers, models, split names and
/// targets, tenants).
pub fn label_value_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return Some("must not be empty");
    }
    if value.len() > MAX_LABEL_VALUE {
        return Some("must be at most 256 characters (it becomes a metric label)");
    }
    if !value.is_ascii() {
        return Some("must be ASCII (it becomes a metric label and a header value)");
    }
    if value.bytes().any(|b| b.is_ascii_control()) {
        return Some("must not contain control characters (it becomes a metric label)");
    }
    if value.contains(' ') {
        return Some("must not contain spaces (it becomes a metric label)");
    }
    if value.contains([';', '=']) {
        return Some("must not contain ';' or '=' (they delimit metric labels)");
    }
    if value.contains(['"', '\\']) {
        return Some("must not contain quotes or backslashes (it becomes a metric label)");
    }
    None
}
