//! End-to-end tests against a real cluster. They run only when `HISTOR_E2E_KUBECONFIG` names a
//! kubeconfig with cluster-admin rights, and skip with a message otherwise.

mod operator;
