//! Real peers for the alerts: an HTTP receiver for Slack's incoming-webhook calls and aiosmtpd
//! for email, both on loopback.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
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

#[path = "../support/smtp.rs"]
mod smtp;
pub use smtp::Smtp;

/// Waits until a message containing every one of `needles` reaches `smtp`.
pub async fn wait_for_mail(smtp: &Smtp, needles: &[&str], timeout: Duration) -> String {
    crate::eventually("an email", timeout, || async {
        smtp.raw_messages()
            .into_iter()
            .find(|m| needles.iter().all(|n| m.contains(n)))
    })
    .await
}
