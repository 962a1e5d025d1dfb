//! Test helpers: the recorded AdmissionReview fixtures, compiled in.

use super::review::{Request, parse};

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        /// `(short name, body)` of every recorded review.
        pub const FIXTURES: &[(&str, &str)] = &[$(
            ($name, include_str!(concat!("../../tests/fixtures/admission/admissionreview-", $name, ".json"))),
        )*];
    };
}

fixtures!(
    "create-configmap-alice",
    "create-configmap-denied",
    "create-configmap-dryrun",
    "create-configmap",
    "create-deployment",
    "create-secret",
    "create-widget",
    "delete-configmap-alice",
    "delete-configmap",
    "delete-deployment",
    "delete-secret",
    "delete-widget",
    "update-configmap",
    "update-deployment-dryrun",
    "update-deployment-scale",
    "update-deployment",
    "update-secret",
    "update-widget-scale",
    "update-widget-status",
    "update-widget",
);

const INDEX: &str = include_str!("../../tests/fixtures/index.json");

/// The body of one fixture, by short name (`update-deployment`).
pub fn fixture(name: &str) -> &'static str {
    FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .1
}

/// The parsed request of one fixture.
pub fn request(name: &str) -> Request {
    parse(fixture(name).as_bytes()).unwrap().request.unwrap()
}

/// The request uid index.json gives for a fixture.
pub fn index_uid(name: &str) -> &'static str {
    let file = format!("admissionreview-{name}.json");
    let index: Vec<serde_json::Value> = serde_json::from_str(INDEX).unwrap();
    let uid = index
        .iter()
        .find(|e| e["file"] == file.as_str())
        .and_then(|e| e["request_uid"].as_str())
        .unwrap_or_else(|| panic!("{file} not in index.json"))
        .to_owned();
    Box::leak(uid.into_boxed_str())
}

/// The recorded Widget update with numbers no `f64` holds added to its new `spec`: a 5,000-digit
/// integer and `1e999` (written into the text: serde_json cannot write them). Returns the body and
/// the integer's text.
pub fn wide_numbers_review() -> (String, String) {
    let mut v: serde_json::Value = serde_json::from_str(fixture("update-widget")).unwrap();
    v["request"]["object"]["spec"]["huge"] = "HUGE".into();
    v["request"]["object"]["spec"]["big"] = "BIG".into();
    v["request"]["object"]["spec"]["note"] = "1e999 \" -1e999".into();
    let huge = format!("-{}", "7".repeat(5000));
    let body = v
        .to_string()
        .replace("\"HUGE\"", &huge)
        .replace("\"BIG\"", "1e999");
    (body, huge)
}

/// `apps/v1` `deployments`, the resource most test events change.
pub fn deployments() -> super::ResourceId {
    super::ResourceId {
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
        subresource: None,
    }
}

/// `apps/v1` `Deployment`, the kind of [`deployments`].
pub fn deployment_kind() -> super::KindId {
    super::KindId {
        group: "apps".into(),
        version: "v1".into(),
        kind: "Deployment".into(),
    }
}

/// The recorded v1.33 AdmissionReviews (`tests/fixtures/v1.33/admission/`): `(file name, body)`,
/// in order of arrival.
pub fn v133_reviews() -> Vec<(String, String)> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/v1.33/admission"
    );
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// The parsed request of the v1.33 review whose file name starts with `prefix` (`021-`).
pub fn v133_request(prefix: &str) -> Request {
    let (_, body) = v133_reviews()
        .into_iter()
        .find(|(n, _)| n.starts_with(prefix))
        .unwrap_or_else(|| panic!("no v1.33 review {prefix}*"));
    parse(body.as_bytes()).unwrap().request.unwrap()
}
