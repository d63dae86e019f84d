//! The current endpoints of each pool, with file-backed pools re-read when the file changes.

use crate::config::{parse_pool_file, PoolConfig, PoolSource};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What identifies a version of a pool file: modification time and size.
type Stamp = (Option<SystemTime>, u64);

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub endpoints: Vec<String>,
    file: Option<WatchedFile>,
}

#[derive(Debug)]
struct WatchedFile {
    path: PathBuf,
    stamp: Option<Stamp>,
    /// The last problem logged, so that a persisting problem is logged once.
    last_error: Option<String>,
}

impl Pool {
    /// Builds a pool; a file-backed pool's file must be readable and valid at startup.
    pub fn load(cfg: &PoolConfig) -> Result<Pool, String> {
        match &cfg.source {
            PoolSource::Static(addrs) => Ok(Pool {
                name: cfg.name.clone(),
                endpoints: addrs.clone(),
                file: None,
            }),
            PoolSource::File(path) => {
                let (stamp, text) =
                    read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let endpoints =
                    parse_pool_file(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Pool {
                    name: cfg.name.clone(),
                    endpoints,
                    file: Some(WatchedFile {
                        path: path.clone(),
                        stamp: Some(stamp),
                        last_error: None,
                    }),
                })
            }
        }
    }

    pub fn describe(&self) -> String {
        match &self.file {
            None => format!("{}: {} endpoint(s)", self.name, self.endpoints.len()),
            Some(f) => format!(
                "{}: {} endpoint(s) from {}",
                self.name,
                self.endpoints.len(),
                f.path.display()
            ),
        }
    }

    /// Re-reads a file-backed pool if its file changed. Returns log lines (reloads, errors).
    /// On a read or parse error the previous endpoints stay in use.
    pub fn refresh(&mut self) -> Vec<String> {
        let Some(file) = self.file.as_mut() else {
            return Vec::new();
        };
        let mut logs = Vec::new();
        let stamp = match std::fs::metadata(&file.path) {
            Ok(m) => (m.modified().ok(), m.len()),
            Err(e) => {
                note_error(
                    file,
                    &mut logs,
                    format!(
                        "pool {}: cannot read {} ({e}); keeping the previous {} endpoint(s)",
                        self.name,
                        file.path.display(),
                        self.endpoints.len()
                    ),
                );
                return logs;
            }
        };
        if file.stamp == Some(stamp) {
            return logs;
        }
        let parsed = read(&file.path)
            .map_err(|e| format!("cannot read {} ({e})", file.path.display()))
            .and_then(|(stamp, text)| {
                parse_pool_file(&text)
                    .map(|eps| (stamp, eps))
                    .map_err(|e| format!("{}: {e}", file.path.display()))
            });
        match parsed {
            Ok((stamp, endpoints)) => {
                file.stamp = Some(stamp);
                file.last_error = None;
                if endpoints != self.endpoints {
                    logs.push(format!(
                        "pool {}: reloaded {}: {} endpoint(s){}",
                        self.name,
                        file.path.display(),
                        endpoints.len(),
                        diff(&self.endpoints, &endpoints)
                    ));
                    if endpoints.is_empty() {
                        logs.push(format!(
                            "pool {}: the pool file lists no endpoint",
                            self.name
                        ));
                    }
                    self.endpoints = endpoints;
                }
            }
            Err(e) => {
                // Do not remember the stamp: the file is retried every interval until it is valid.
                note_error(
                    file,
                    &mut logs,
                    format!(
                        "pool {}: {e}; keeping the previous {} endpoint(s)",
                        self.name,
                        self.endpoints.len()
                    ),
                );
            }
        }
        logs
    }
}

/// The pools of one cycle, by name: the configured pools, plus the Kubernetes tiers. A tier
/// named like a configured pool adds its endpoints to that pool (an address already listed
/// there is not repeated).
pub fn merge(files: &[Pool], kube: BTreeMap<String, Vec<String>>) -> Vec<(String, Vec<String>)> {
    let mut pools: BTreeMap<String, Vec<String>> = files
        .iter()
        .map(|p| (p.name.clone(), p.endpoints.clone()))
        .collect();
    for (tier, endpoints) in kube {
        let list = pools.entry(tier).or_default();
        for address in endpoints {
            if !list.contains(&address) {
                list.push(address);
            }
        }
    }
    pools.into_iter().collect()
}

fn note_error(file: &mut WatchedFile, logs: &mut Vec<String>, message: String) {
    if file.last_error.as_deref() != Some(message.as_str()) {
        logs.push(message.clone());
        file.last_error = Some(message);
    }
}

fn read(path: &Path) -> std::io::Result<(Stamp, String)> {
    let meta = std::fs::metadata(path)?;
    let text = std::fs::read_to_string(path)?;
    Ok(((meta.modified().ok(), meta.len()), text))
}

fn diff(old: &[String], new: &[String]) -> String {
    let added: Vec<&str> = new
        .iter()
        .filter(|a| !old.contains(a))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = old
        .iter()
        .filter(|a| !new.contains(a))
        .map(String::as_str)
        .collect();
    let mut out = String::new();
    if !added.is_empty() {
        out.push_str(&format!(" (+{})", added.join(", +")));
    }
    if !removed.is_empty() {
        out.push_str(&format!(" (-{})", removed.join(", -")));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn temp_file(tag: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "llm-router-sidecar-test-{}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool.txt");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Rewrites the file so that its stamp surely changes (mtime granularity can be coarse).
    fn rewrite(path: &Path, text: &str) {
        let before = std::fs::metadata(path).unwrap().modified().unwrap();
        loop {
            std::fs::write(path, text).unwrap();
            if std::fs::metadata(path).unwrap().modified().unwrap() != before {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn kubernetes_tiers_join_the_configured_pools() {
        let cfg = |name: &str, addrs: &[&str]| PoolConfig {
            name: name.into(),
            source: PoolSource::Static(addrs.iter().map(|a| a.to_string()).collect()),
        };
        let files = [
            Pool::load(&cfg("small", &["10.0.0.1:8000"])).unwrap(),
            Pool::load(&cfg("large", &["10.0.0.9:8000"])).unwrap(),
        ];
        let kube: BTreeMap<String, Vec<String>> = [
            (
                "small".to_string(),
                vec!["10.0.0.2:8000".to_string(), "10.0.0.1:8000".to_string()],
            ),
            ("medium".to_string(), vec![]),
        ]
        .into();
        assert_eq!(
            merge(&files, kube),
            vec![
                ("large".to_string(), vec!["10.0.0.9:8000".to_string()]),
                ("medium".to_string(), vec![]),
                (
                    "small".to_string(),
                    vec!["10.0.0.1:8000".to_string(), "10.0.0.2:8000".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn static_pool() {
        let mut p = Pool::load(&PoolConfig {
            name: "small".into(),
            source: PoolSource::Static(vec!["10.0.0.1:1".into()]),
        })
        .unwrap();
        assert!(p.refresh().is_empty());
        assert_eq!(p.describe(), "small: 1 endpoint(s)");
    }

    #[test]
    fn file_pool_reloads_on_change_and_keeps_last_good() {
        let path = temp_file("reload", "10.0.0.1:8000\n# c\n10.0.0.2:8000\n");
        let cfg = PoolConfig {
            name: "large".into(),
            source: PoolSource::File(path.clone()),
        };
        let mut p = Pool::load(&cfg).unwrap();
        assert_eq!(p.endpoints, vec!["10.0.0.1:8000", "10.0.0.2:8000"]);
        assert!(p.refresh().is_empty(), "unchanged file: nothing to do");

        rewrite(&path, "10.0.0.2:8000\n10.0.0.3:8000\n");
        let logs = p.refresh();
        assert_eq!(p.endpoints, vec!["10.0.0.2:8000", "10.0.0.3:8000"]);
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(
            logs[0].contains("+10.0.0.3:8000") && logs[0].contains("-10.0.0.1:8000"),
            "{logs:?}"
        );

        rewrite(&path, "10.0.0.2:8000\nnot-an-address\n");
        let logs = p.refresh();
        assert_eq!(p.endpoints, vec!["10.0.0.2:8000", "10.0.0.3:8000"], "kept");
        assert!(logs[0].contains("line 2"), "{logs:?}");
        assert!(p.refresh().is_empty(), "the same error is logged once");

        std::fs::remove_file(&path).unwrap();
        let logs = p.refresh();
        assert!(logs[0].contains("cannot read"), "{logs:?}");
        assert_eq!(p.endpoints.len(), 2);

        std::fs::write(&path, "10.0.0.9:8000\n").unwrap();
        p.refresh();
        assert_eq!(p.endpoints, vec!["10.0.0.9:8000"]);

        std::fs::remove_file(&path).unwrap();
        assert!(Pool::load(&cfg).unwrap_err().contains("cannot read"));
        std::fs::write(&path, "bad\n").unwrap();
        assert!(Pool::load(&cfg).unwrap_err().contains("line 1"));
    }
}
