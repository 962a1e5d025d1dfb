//! Turns an AdmissionReview into a clean, attributed [`ChangeEvent`]: pure functions over values,
//! no I/O. Stages: parse the review, match the policy, strip noise, redact Secrets, diff.

mod event;

pub use event::*;
