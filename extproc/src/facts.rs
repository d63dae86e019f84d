//! The few plugin-configuration facts the server itself needs (the filter validates the rest).

use crate::messages::DESTINATION_KEY;

pub const DEFAULT_PUSH_PATH: &str = "/.well-known/llm-router/load";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFacts {
    /// `headers.endpoint`: the header the filter writes the picked endpoint into.
    pub endpoint_header: String,
    /// `endpoints.push_path`: where the sidecar pushes load (answered by the filter).
    pub push_path: String,
}

impl Default for ConfigFacts {
    fn default() -> Self {
        ConfigFacts {
            endpoint_header: DESTINATION_KEY.to_string(),
            push_path: DEFAULT_PUSH_PATH.to_string(),
        }
    }
}

impl ConfigFacts {
    /// Reads the facts from the plugin configuration; anything absent or unreadable keeps its
    /// default (the engine's own validation decides whether the file is acceptable).
    pub fn from_config(bytes: &[u8]) -> ConfigFacts {
        let mut facts = ConfigFacts::default();
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
            return facts;
        };
        if let Some(h) = value.pointer("/headers/endpoint").and_then(|v| v.as_str()) {
            facts.endpoint_header = h.to_ascii_lowercase();
        }
        if let Some(p) = value
            .pointer("/endpoints/push_path")
            .and_then(|v| v.as_str())
        {
            facts.push_path = p.to_string();
        }
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_names_are_read_and_absent_ones_default() {
        let f = ConfigFacts::from_config(
            br#"{"headers":{"endpoint":"X-Pick"},"endpoints":{"push_path":"/load"},"tiers":{}}"#,
        );
        assert_eq!(f.endpoint_header, "x-pick");
        assert_eq!(f.push_path, "/load");
        assert_eq!(
            ConfigFacts::from_config(br#"{"tiers":{}}"#),
            ConfigFacts::default()
        );
        assert_eq!(
            ConfigFacts::from_config(b"not json"),
            ConfigFacts::default()
        );
    }
}
