//! The Slack sink: POSTs Block Kit JSON to an incoming-webhook URL (which is itself the
//! credential, so it never appears in logs or errors).

use super::message::Payload;
use super::retry::DeliveryResult;
use super::sink::{Delivery, Sink};
use super::webhook::{DELIVERY_HEADER, post_json};
use futures::future::BoxFuture;

/// A Slack incoming webhook.
pub struct SlackTransport {
    client: reqwest::Client,
    url: String,
}

impl SlackTransport {
    /// Posts to `url`.
    pub fn new(client: reqwest::Client, url: String) -> Self {
        SlackTransport { client, url }
    }
}

impl Sink for SlackTransport {
    fn deliver<'a>(&'a self, d: Delivery<'a>) -> BoxFuture<'a, DeliveryResult> {
        Box::pin(async move {
            let Payload::Slack { body } = d.payload else {
                return DeliveryResult::permanent("payload is not a Slack message");
            };
            // Slack ignores the header; proxies and bridges in between can dedupe on it.
            post_json(
                &self.client,
                &self.url,
                body,
                &[(DELIVERY_HEADER, d.id.to_string())],
            )
            .await
        })
    }
}
