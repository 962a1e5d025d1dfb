//! The generic webhook sink: POSTs the JSON body with an idempotency header
//! (`X-Histor-Delivery`) and, when a signing key is set, `X-Histor-Signature: sha256=<hex>`, the
//! HMAC-SHA256 of the exact body bytes. Also holds the HTTP helper the Slack sink shares.

use super::message::Payload;
use super::retry::{DeliveryResult, classify_http};
use super::sink::{Delivery, Sink};
use futures::future::BoxFuture;
use jiff::Timestamp;

/// Header carrying the delivery id, the same on every retry of one notification.
pub const DELIVERY_HEADER: &str = "X-Histor-Delivery";
/// Header carrying the body's HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "X-Histor-Signature";

/// `sha256=<hex>`: the signature of `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Checks a `sha256=<hex>` signature in constant time (for receivers and tests).
pub fn verify_signature(key: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, body, &tag).is_ok()
}

/// POSTs `body` as JSON and classifies the answer. Errors are stripped of the URL: a Slack
/// webhook URL is itself a credential.
pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    headers: &[(&str, String)],
) -> DeliveryResult {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            classify_http(status, retry_after.as_deref(), Timestamp::now())
        }
        Err(e) => {
            let builder = e.is_builder();
            let e = e.without_url();
            if builder {
                // A malformed URL will not fix itself, but a rotated Secret might: the retry
                // budget covers that, so only a request that cannot even be built is permanent.
                DeliveryResult::permanent(format!("bad request: {e}"))
            } else {
                DeliveryResult::retry(format!("request failed: {e}"))
            }
        }
    }
}

/// A generic JSON webhook.
pub struct WebhookTransport {
    client: reqwest::Client,
    url: String,
    signing_key: Option<Vec<u8>>,
}

impl WebhookTransport {
    /// POSTs to `url`, signing with `signing_key` when given.
    pub fn new(client: reqwest::Client, url: String, signing_key: Option<Vec<u8>>) -> Self {
        WebhookTransport {
            client,
            url,
            signing_key,
        }
    }
}

impl Sink for WebhookTransport {
    fn deliver<'a>(&'a self, d: Delivery<'a>) -> BoxFuture<'a, DeliveryResult> {
        Box::pin(async move {
            let Payload::Webhook { body } = d.payload else {
                return DeliveryResult::permanent("payload is not a webhook body");
            };
            let mut headers = vec![(DELIVERY_HEADER, d.id.to_string())];
            if let Some(key) = &self.signing_key {
                headers.push((SIGNATURE_HEADER, signature(key, body.as_bytes())));
            }
            post_json(&self.client, &self.url, body, &headers).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify() {
        let s = signature(b"key", b"{\"a\":1}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
        assert!(verify_signature(b"key", b"{\"a\":1}", &s));
        assert!(!verify_signature(b"other", b"{\"a\":1}", &s));
        assert!(!verify_signature(b"key", b"{\"a\":2}", &s));
        assert!(!verify_signature(b"key", b"{\"a\":1}", "sha256=zz"));
    }
}
