//! The audit witness: the apiserver's audit events, taken in from its webhook backend (the
//! capture server's `/audit`) or a followed log file ([`follow`]), kept in the store's audit
//! journal exactly once, then joined to the changes histor recorded.

pub mod follow;
