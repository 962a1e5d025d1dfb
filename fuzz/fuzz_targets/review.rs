//! Fuzzes the AdmissionReview parser and the pipeline behind it: no input may panic.
#![no_main]

use histor::crd::TrackingPolicySpec;
use histor::pipeline::{self, CompiledPolicy, Redactor};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn policy() -> &'static CompiledPolicy {
    static POLICY: OnceLock<CompiledPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let spec: TrackingPolicySpec = serde_json::from_str(
            r#"{"resources":[{"apiGroups":["*"],"resources":["*/*"]}],
                "conditions":[{"name":"humans","expression":"!request.userInfo.username.startsWith('system:')"}],
                "ignoreFields":["/spec/replicas","/metadata/annotations/*"]}"#,
        )
        .expect("fuzz policy parses");
        CompiledPolicy::compile("fuzz", &spec).expect("fuzz policy compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = pipeline::review::parse(data) {
        let _ = pipeline::allowed_response(&parsed.api_version, parsed.uid.as_deref().unwrap_or_default());
        if let Ok(request) = parsed.request {
            let redactor = Redactor::new(b"fuzz-key-0123456789");
            let _ = pipeline::process(&request, policy(), &redactor, jiff::Timestamp::UNIX_EPOCH);
        }
    }
});
