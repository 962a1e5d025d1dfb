//! The email sink, through lettre: STARTTLS (default, port 587), implicit TLS (`tls`, port 465) or
//! plain SMTP for a local relay (`none`, port 25), optional credentials and an optional private CA
//! (`ca.crt`), all read from the sink's Secret. Each mail carries a `Message-ID` derived from the
//! delivery id so that a retried mail can be recognised as the same message.

use super::message::Payload;
use super::retry::DeliveryResult;
use super::secrets::SecretValues;
use super::sink::{Delivery, Sink};
use crate::crd::SecretRef;
use crate::{Error, Result};
use futures::future::BoxFuture;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// How the SMTP connection is secured (Secret key `tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS; the upgrade is required.
    StartTls,
    /// TLS from the first byte (SMTPS).
    Implicit,
    /// No TLS, for a relay on localhost or inside the pod network.
    None,
}

impl SmtpTls {
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "starttls" => Some(SmtpTls::StartTls),
            "tls" | "implicit" | "smtps" => Some(SmtpTls::Implicit),
            "none" | "plain" => Some(SmtpTls::None),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            SmtpTls::StartTls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        }
    }
}

/// An SMTP connection plus sender and recipients.
pub struct EmailTransport {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl EmailTransport {
    /// Builds the transport from the Secret's `host`, `port`, `tls`, `username`, `password` and
    /// `ca.crt` keys.
    pub fn from_secret(
        secret: &SecretRef,
        values: &SecretValues,
        from: &str,
        to: &[String],
        timeout: Duration,
    ) -> Result<Self> {
        let bad = |message: String| Error::Secret {
            namespace: secret.namespace.clone(),
            name: secret.name.clone(),
            message,
        };
        let host = values
            .text("host")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("has no key \"host\"".into()))?;
        let mode = match values.text("tls") {
            None => SmtpTls::StartTls,
            Some(t) => SmtpTls::parse(&t)
                .ok_or_else(|| bad(format!("tls must be starttls, tls or none, not {t:?}")))?,
        };
        let port = match values.text("port") {
            None => mode.default_port(),
            Some(p) => p
                .parse()
                .map_err(|_| bad(format!("port {p:?} is not a port number")))?,
        };
        let tls_parameters = || -> Result<TlsParameters> {
            let mut b = TlsParameters::builder(host.clone());
            if let Some(ca) = values.bytes("ca.crt") {
                let cert = Certificate::from_pem(ca)
                    .map_err(|e| bad(format!("ca.crt is not a PEM certificate: {e}")))?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls().map_err(|e| Error::Smtp(e.to_string()))
        };
        let tls = match mode {
            SmtpTls::StartTls => Tls::Required(tls_parameters()?),
            SmtpTls::Implicit => Tls::Wrapper(tls_parameters()?),
            SmtpTls::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(user) = values.text("username").filter(|u| !u.is_empty()) {
            let password = values.text("password").unwrap_or_default();
            builder = builder.credentials(Credentials::new(user, password));
        }
        let sink = |message: String| Error::Notify {
            sink: format!("email from {from}"),
            message,
        };
        let from: Mailbox = from
            .parse()
            .map_err(|e| sink(format!("bad from address: {e}")))?;
        let to = to
            .iter()
            .map(|t| {
                t.parse()
                    .map_err(|e| sink(format!("bad to address {t:?}: {e}")))
            })
            .collect::<Result<Vec<Mailbox>>>()?;
        Ok(EmailTransport {
            transport: builder.build(),
            from,
            to,
        })
    }

    fn message(&self, d: Delivery<'_>) -> std::result::Result<Message, String> {
        let Payload::Email(content) = d.payload else {
            return Err("payload is not an email".into());
        };
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(content.subject.clone())
            .message_id(Some(format!("<{}@histor.dev>", d.id)));
        for to in &self.to {
            b = b.to(to.clone());
        }
        b.multipart(MultiPart::alternative_plain_html(
            content.text.clone(),
            content.html.clone(),
        ))
        .map_err(|e| e.to_string())
    }
}

/// Retries what a later attempt may fix: transient (4xx) replies, timeouts, connection and TLS
/// failures (a rotated Secret may fix those). Permanent (5xx) replies are final.
fn classify_smtp(e: &lettre::transport::smtp::Error) -> DeliveryResult {
    let reason = format!("smtp: {e}");
    if e.is_permanent() {
        DeliveryResult::permanent(reason)
    } else {
        DeliveryResult::retry(reason)
    }
}

impl Sink for EmailTransport {
    fn deliver<'a>(&'a self, d: Delivery<'a>) -> BoxFuture<'a, DeliveryResult> {
        Box::pin(async move {
            let message = match self.message(d) {
                Ok(m) => m,
                Err(e) => return DeliveryResult::permanent(format!("cannot build email: {e}")),
            };
            match self.transport.send(message).await {
                Ok(_) => DeliveryResult::Delivered,
                Err(e) => classify_smtp(&e),
            }
        })
    }
}
