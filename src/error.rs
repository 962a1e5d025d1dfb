//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in histor, by cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A TrackingPolicy that cannot be applied as written.
    #[error("policy {policy}: {message}")]
    Policy { policy: String, message: String },

    /// A request body that is not an AdmissionReview.
    #[error("not an AdmissionReview: {0}")]
    BadReview(String),

    /// The store's engine failed (the engine's own error inside; an I/O error from it is
    /// reachable through `source()`, which [`Error::is_no_space`] relies on).
    #[error("store: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The store is held by another process (a running `histor serve`).
    #[error(
        "the store at {0} is in use by another histor process; stop it or query through its API"
    )]
    StoreLocked(PathBuf),

    /// The store is reopening its database after a write failure.
    #[error("store: closed while it reopens after a write failure")]
    StoreClosed,

    /// The local spool (events kept while a shared store cannot take them) is at its bound.
    #[error(
        "spool full: it holds {held} bytes of its {limit}-byte bound and the batch needs {needed} more; events wait in memory until the store drains it"
    )]
    SpoolFull { held: u64, needed: u64, limit: u64 },

    /// Stored bytes that do not decode.
    #[error("corrupt stored record: {0}")]
    Corrupt(String),

    /// The event queue is full; the review was answered but not recorded.
    #[error("event queue full")]
    QueueFull,

    /// TLS configuration or certificate generation failed.
    #[error("tls: {0}")]
    Tls(String),

    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Other I/O failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),

    /// A command-line argument that does not make sense.
    #[error("{0}")]
    Usage(String),

    /// A Secret a sink needs is missing, unreadable or lacks a key.
    #[error("secret {namespace}/{name}: {message}")]
    Secret {
        namespace: String,
        name: String,
        message: String,
    },

    /// The Kubernetes API failed.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),

    /// Reconciling through kube's finalizer helper failed (adding or removing the finalizer, or
    /// the apply or cleanup inside it).
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(String),

    /// A notification sink is misconfigured or cannot be used as configured.
    #[error("notify sink {sink}: {message}")]
    Notify { sink: String, message: String },

    /// Building or sending an email failed.
    #[error("smtp: {0}")]
    Smtp(String),

    /// An HTTP request to a sink failed.
    #[error("http: {0}")]
    Http(String),

    /// A query API request without valid credentials.
    #[error("{0}")]
    Unauthorized(String),

    /// A query API request by a user not allowed to see what it asks for.
    #[error("{0}")]
    Forbidden(String),

    /// A query API request for something that does not exist.
    #[error("{0}")]
    NotFound(String),

    /// A query API request with parameters that do not make sense.
    #[error("{0}")]
    BadRequest(String),
}

impl Error {
    /// A short, fixed label for metrics (`error` label values must stay low-cardinality).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Policy { .. } => "policy",
            Error::BadReview(_) => "bad_review",
            Error::Store(_) | Error::StoreLocked(_) | Error::StoreClosed => "store",
            Error::SpoolFull { .. } => "spool_full",
            Error::Corrupt(_) => "corrupt",
            Error::QueueFull => "queue_full",
            Error::Tls(_) => "tls",
            Error::Json(_) => "json",
            Error::File { .. } | Error::Io(_) => "io",
            Error::Usage(_) => "usage",
            Error::Secret { .. } => "secret",
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Lease(_) => "lease",
            Error::Notify { .. } => "notify",
            Error::Smtp(_) => "smtp",
            Error::Http(_) => "http",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::BadRequest(_) => "bad_request",
        }
    }

    /// True for a full disk (ENOSPC), however it was wrapped: an I/O error of kind
    /// `StorageFull` (or errno 28) anywhere in the chain of sources of a store or I/O error (an
    /// engine wraps it in an error of its own).
    pub fn is_no_space(&self) -> bool {
        if !matches!(self, Error::Store(_) | Error::Io(_) | Error::File { .. }) {
            return false;
        }
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && (io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28))
            {
                return true;
            }
            next = e.source();
        }
        false
    }

    /// Wraps an engine's error as a [`Error::Store`].
    pub fn store(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Store(Box::new(e))
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File {
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
