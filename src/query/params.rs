//! URL query parameters of the query API, turned into a store [`Query`]. Pure: parameters and the
//! current time in, a query or a 400 out.

use super::api::{IncludeObject, decode_continue};
use crate::pipeline::parse_duration;
use crate::store::Query;
use crate::{Error, Result};
use jiff::{SignedDuration, Timestamp};

/// Page size when the client gives none.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page served.
pub const MAX_LIMIT: usize = 1000;

/// A parsed list request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListParams {
    /// The store query (namespace set by the caller from the path).
    pub query: Query,
    /// What Table rows carry as `object`.
    pub include_object: IncludeObject,
}

/// Parses the parameters of a list request. Unknown parameters (`fieldSelector`,
/// `labelSelector`, `resourceVersion`, `timeoutSeconds` that kubectl sends) are ignored, so
/// `kubectl get` works; `watch` is refused because it cannot be honoured.
pub fn list_params(pairs: &[(String, String)], now: Timestamp) -> Result<ListParams> {
    let mut out = ListParams::default();
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in pairs {
        let value = value.trim();
        let non_empty = || (!value.is_empty()).then(|| value.to_string());
        match key.as_str() {
            "kind" => out.query.kind = non_empty(),
            "name" => out.query.name = non_empty(),
            "uid" => out.query.uid = non_empty(),
            "user" => out.query.user = non_empty(),
            "operation" if !value.is_empty() => {
                out.query.operation = Some(value.parse().map_err(Error::BadRequest)?)
            }
            "since" if !value.is_empty() => out.query.since = Some(time(value, now)?),
            "until" if !value.is_empty() => out.query.until = Some(time(value, now)?),
            "limit" if !value.is_empty() => {
                limit = value
                    .parse::<usize>()
                    .map_err(|_| Error::BadRequest(format!("limit {value:?} is not a number")))?;
                if limit == 0 {
                    limit = DEFAULT_LIMIT;
                }
            }
            "continue" if !value.is_empty() => out.query.after = Some(decode_continue(value)?),
            "includeObject" => out.include_object = IncludeObject::parse(value),
            "watch" if value == "true" || value == "1" => {
                return Err(Error::BadRequest(
                    "watch is not supported for changes".into(),
                ));
            }
            _ => {}
        }
    }
    out.query.limit = limit.min(MAX_LIMIT);
    Ok(out)
}

/// True when the parameters ask for `before` and `after` objects (`include=objects`).
pub fn include_objects(pairs: &[(String, String)]) -> bool {
    pairs
        .iter()
        .any(|(k, v)| k == "include" && v.split(',').any(|p| p.trim() == "objects"))
}

/// An RFC 3339 time, or a duration back from `now` (`1h`, `90m`, `7d`).
fn time(value: &str, now: Timestamp) -> Result<Timestamp> {
    if let Ok(t) = value.parse::<Timestamp>() {
        return Ok(t);
    }
    let ago = match value.strip_suffix('d').map(str::parse::<i64>) {
        Some(Ok(days)) => SignedDuration::from_hours(days.saturating_mul(24)),
        _ => parse_duration(value).map_err(|_| {
            Error::BadRequest(format!(
                "{value:?} is neither an RFC 3339 time nor a duration such as 1h, 90m or 7d"
            ))
        })?,
    };
    now.checked_sub(ago.abs())
        .map_err(|_| Error::BadRequest(format!("{value:?} reaches too far back")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Operation;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn filters_and_paging_become_a_store_query() {
        let p = list_params(
            &pairs(&[
                ("kind", "deployments.apps"),
                ("name", "api"),
                ("user", "alice"),
                ("operation", "update"),
                ("since", "1h"),
                ("until", "2024-05-01T11:30:00Z"),
                ("limit", "5000"),
                ("continue", "1700"),
                ("fieldSelector", "metadata.name=x"),
                ("labelSelector", "a=b"),
            ]),
            now(),
        )
        .unwrap();
        let q = p.query;
        assert_eq!(q.kind.as_deref(), Some("deployments.apps"));
        assert_eq!(q.name.as_deref(), Some("api"));
        assert_eq!(q.user.as_deref(), Some("alice"));
        assert_eq!(q.operation, Some(Operation::Update));
        assert_eq!(q.since, Some("2024-05-01T11:00:00Z".parse().unwrap()));
        assert_eq!(q.until, Some("2024-05-01T11:30:00Z".parse().unwrap()));
        assert_eq!(q.limit, MAX_LIMIT);
        assert_eq!(q.after, Some(1700));
    }

    #[test]
    fn defaults_and_days() {
        let p = list_params(&pairs(&[("since", "2d"), ("limit", "0")]), now()).unwrap();
        assert_eq!(p.query.limit, DEFAULT_LIMIT);
        assert_eq!(p.query.since, Some("2024-04-29T12:00:00Z".parse().unwrap()));
        assert_eq!(p.include_object, IncludeObject::Metadata);
    }

    #[test]
    fn bad_parameters_are_bad_requests() {
        for bad in [
            ("since", "yesterday"),
            ("limit", "-1"),
            ("operation", "PATCH"),
            ("continue", "abc"),
            ("watch", "true"),
        ] {
            let r = list_params(&pairs(&[bad]), now());
            assert!(matches!(r, Err(Error::BadRequest(_))), "{bad:?}: {r:?}");
        }
    }

    #[test]
    fn include_objects_is_recognised() {
        assert!(include_objects(&pairs(&[("include", "objects")])));
        assert!(!include_objects(&pairs(&[("include", "")])));
    }
}
