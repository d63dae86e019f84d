//! A real redis-server started by the test on a free port (no persistence), and the quota
//! service started in-process against it. A missing redis-server fails the test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llm_router_extproc::quota::config::Limits;
use llm_router_extproc::quota::proto::QuotaClient;
use llm_router_extproc::quota::script::Store;
use llm_router_extproc::quota::server::{QuotaBound, QuotaServe};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The redis-server binary: $REDIS_SERVER, else what scripts/redis-bin.sh prints (it installs
/// Debian's package when needed).
pub fn redis_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis-bin.sh");
    let out = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: redis-server is required for this test"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        let bin = redis_bin();
        let child = Command::new(&bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let r = Redis {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.cmd(&["PING"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A synchronous connection for the test's own reads and writes.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    pub fn cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let mut c = redis::Client::open(self.url())?
            .get_connection_with_timeout(Duration::from_millis(500))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c)
    }

    /// Sends a signal (`STOP`, `CONT`) to the server.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().map(|c| c.id().to_string()).unwrap();
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{name} {pid}");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The quota service on free ports, plaintext; stopped when dropped.
pub struct Service {
    pub grpc: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    pub async fn start(redis_url: &str, timeout: Duration, limits: Option<Limits>) -> Service {
        let store = Store::new(redis_url, timeout).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bound = QuotaBound::bind(any, any, any).await.unwrap();
        let [grpc, health, metrics] = bound.local_addrs();
        let (tx, rx) = oneshot::channel::<()>();
        let serve = QuotaServe {
            store,
            limits,
            tls: None,
            drain: Duration::from_secs(2),
        };
        let task = tokio::spawn(async move {
            bound
                .run(serve, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Service {
            grpc,
            health,
            metrics,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        let url = format!("http://{}", self.grpc);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Channel::from_shared(url.clone()).unwrap().connect().await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{url}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    pub async fn client(&self) -> QuotaClient {
        QuotaClient::new(self.channel().await)
    }

    pub async fn metrics_text(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The value of one series line in Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
