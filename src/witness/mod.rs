//! The witnesses of commits: what tells whether a change admission announced was stored, and
//! which changes were stored without a review. [`managed`] reads who last wrote an object from its
//! `managedFields`.

pub mod managed;
