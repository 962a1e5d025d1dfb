//! The [`Sink`] trait every transport implements, and [`connect`], which builds a sink's transport
//! from its spec and the current Secret values (read at every delivery, so rotation needs no
//! restart).

use super::config::{NotifyConfig, SinkTarget};
use super::email::EmailTransport;
use super::message::Payload;
use super::retry::DeliveryResult;
use super::secrets::{SecretSource, get_key};
use super::slack::SlackTransport;
use super::webhook::WebhookTransport;
use crate::Result;
use futures::future::BoxFuture;

/// One delivery attempt's input.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// Idempotency key, the same on every attempt of one notification.
    pub id: &'a str,
    /// What to send.
    pub payload: &'a Payload,
}

/// A transport that can deliver a rendered notification.
pub trait Sink: Send + Sync {
    /// Tries once; classifies the outcome for the retry logic. Never includes secret values
    /// (webhook URLs, passwords) in the returned reasons.
    fn deliver<'a>(&'a self, delivery: Delivery<'a>) -> BoxFuture<'a, DeliveryResult>;
}

/// Builds the transport for `target` with the Secrets as they are now.
pub async fn connect(
    target: &SinkTarget,
    secrets: &dyn SecretSource,
    http: &reqwest::Client,
    config: &NotifyConfig,
) -> Result<Box<dyn Sink>> {
    Ok(match target {
        SinkTarget::Slack { url } => Box::new(SlackTransport::new(
            http.clone(),
            get_key(secrets, url).await?,
        )),
        SinkTarget::Webhook { url, signing_key } => {
            let key = match signing_key {
                Some(k) => Some(get_key(secrets, k).await?.into_bytes()),
                None => None,
            };
            Box::new(WebhookTransport::new(
                http.clone(),
                get_key(secrets, url).await?,
                key,
            ))
        }
        SinkTarget::Email { smtp, from, to } => {
            let values = secrets.get(smtp).await?;
            Box::new(EmailTransport::from_secret(
                smtp,
                &values,
                from,
                to,
                config.request_timeout,
            )?)
        }
    })
}
