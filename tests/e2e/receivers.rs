//! Real peers for the alerts: an HTTP receiver for Slack's incoming-webhook calls and aiosmtpd
//! for email, both on loopback.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records the JSON bodies POSTed to it.
#[derive(Clone)]
pub struct Slack {
    pub url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Slack {
    pub async fn start() -> Slack {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        async fn handle(
            State(bodies): State<Arc<Mutex<Vec<serde_json::Value>>>>,
            body: Bytes,
        ) -> &'static str {
            let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            bodies.lock().unwrap().push(value);
            "ok"
        }
        let app = axum::Router::new()
            .route("/{*path}", post(handle))
            .with_state(bodies.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/services/e2e", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Slack { url, bodies }
    }

    /// Waits until a message whose text mentions every one of `needles` arrives.
    pub async fn wait_for(&self, needles: &[&str], timeout: Duration) -> serde_json::Value {
        crate::eventually("a Slack message", timeout, || async {
            self.bodies
                .lock()
                .unwrap()
                .iter()
                .find(|b| {
                    let text = b.to_string();
                    needles.iter().all(|n| text.contains(n))
                })
                .cloned()
        })
        .await
    }
}

/// aiosmtpd with a Maildir handler, stopped when dropped.
pub struct Smtp {
    child: Child,
    pub port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    pub fn start() -> Smtp {
        let ok = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "the e2e alert test needs a real SMTP server: pip install aiosmtpd"
        );
        let maildir = tempfile::tempdir().unwrap();
        let port = crate::free_port();
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("Maildir"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        let smtp = Smtp {
            child,
            port,
            maildir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return smtp;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("aiosmtpd did not start on port {port}");
    }

    /// The raw messages delivered so far.
    pub fn messages(&self) -> Vec<String> {
        read_dir(&self.maildir.path().join("Maildir").join("new"))
    }

    /// Waits until a message containing every one of `needles` arrives.
    pub async fn wait_for(&self, needles: &[&str], timeout: Duration) -> String {
        crate::eventually("an email", timeout, || async {
            self.messages()
                .into_iter()
                .find(|m| needles.iter().all(|n| m.contains(n)))
        })
        .await
    }
}

fn read_dir(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect()
}
