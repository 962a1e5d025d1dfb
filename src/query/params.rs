//! URL query parameters of the query API, turned into a store [`Query`]. Pure: parameters and the
//! current time in, a query or a 400 out.

use super::api::{IncludeObject, decode_continue};
use crate::pipeline::parse_duration;
use crate::render::shorten;
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
                out.query.operation = Some(value.parse().map_err(|_| {
                    Error::BadRequest(format!(
                        "operation {} is not CREATE, UPDATE, DELETE or CONNECT",
                        quoted(value)
                    ))
                })?)
            }
            "state" if !value.is_empty() => {
                out.query.state = Some(value.parse().map_err(|_| {
                    Error::BadRequest(format!(
                        "state {} is not received, confirmed, notApplied, observed or unconfirmed",
                        quoted(value)
                    ))
                })?)
            }
            "since" if !value.is_empty() => out.query.since = Some(time("since", value, now)?),
            "until" if !value.is_empty() => out.query.until = Some(time("until", value, now)?),
            "limit" if !value.is_empty() => limit = page_size(value)?,
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

/// A value as error messages echo it: quoted, control characters escaped, and cut short, so a
/// megabyte of parameter does not come back as a megabyte of error.
pub(super) fn quoted(value: &str) -> String {
    format!("{:?}", shorten(value, MAX_ECHOED))
}

/// Longest part of a bad value an error message repeats, in characters.
const MAX_ECHOED: usize = 64;

/// `limit`: 0 means the default; anything past [`MAX_LIMIT`] (however many digits) means the
/// largest page, as Kubernetes caps rather than refuses a large limit.
fn page_size(value: &str) -> Result<usize> {
    if value.starts_with('-') && value.len() > 1 && value[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadRequest(format!(
            "limit {} must not be negative",
            quoted(value)
        )));
    }
    let digits = value.strip_prefix('+').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadRequest(format!(
            "limit {} is not a whole number",
            quoted(value)
        )));
    }
    Ok(match digits.parse::<usize>() {
        Ok(0) => DEFAULT_LIMIT,
        Ok(n) => n.min(MAX_LIMIT),
        // All digits, too many for a usize: far past the cap.
        Err(_) => MAX_LIMIT,
    })
}

/// An RFC 3339 time, or a duration back from `now` (`1h`, `90m`, `7d`; a sign is ignored: a
/// duration always reaches back). Every value gives a time or a 400: the arithmetic is checked,
/// so `9999999999999999d` is "too far back", not a panic.
pub(super) fn time(param: &str, value: &str, now: Timestamp) -> Result<Timestamp> {
    let bad = |why: String| Error::BadRequest(format!("{param} {}: {why}", quoted(value)));
    let timestamp = value.parse::<Timestamp>();
    if let Ok(t) = timestamp {
        return Ok(t);
    }
    let ago = match value.strip_suffix('d').map(str::parse::<i64>) {
        Some(Ok(days)) => days
            .checked_mul(86_400)
            .map(SignedDuration::from_secs)
            .ok_or_else(|| bad("reaches too far back".into()))?,
        _ => match parse_duration(value) {
            Ok(d) => d,
            // A date that does not parse is better explained by the time parser.
            Err(_) if looks_like_a_time(value) => {
                let why = timestamp.err().map_or_else(String::new, |e| e.to_string());
                return Err(bad(format!("not an RFC 3339 time: {why}")));
            }
            Err(_) => {
                return Err(bad(
                    "neither an RFC 3339 time nor a duration such as 1h, 90m or 7d".into(),
                ));
            }
        },
    };
    let ago = if ago.is_negative() {
        ago.checked_neg()
            .ok_or_else(|| bad("reaches too far back".into()))?
    } else {
        ago
    };
    now.checked_sub(ago)
        .map_err(|_| bad("reaches too far back".into()))
}

/// `2024-05-01…`: four or more digits and a dash, as a date starts.
fn looks_like_a_time(value: &str) -> bool {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    digits >= 4 && value.as_bytes().get(digits) == Some(&b'-')
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
    fn every_state_is_a_filter_and_an_unknown_one_a_400() {
        use crate::pipeline::ChangeState;
        for state in ChangeState::ALL {
            let p = list_params(&pairs(&[("state", state.as_str())]), now()).unwrap();
            assert_eq!(p.query.state, Some(state));
        }
        // As the CLI and kubectl users may type it.
        let p = list_params(&pairs(&[("state", "notapplied")]), now()).unwrap();
        assert_eq!(p.query.state, Some(ChangeState::NotApplied));
        let p = list_params(&pairs(&[("state", "")]), now()).unwrap();
        assert_eq!(p.query.state, None);
        assert_eq!(
            bad_request(&[("state", "applied")]),
            "state \"applied\" is not received, confirmed, notApplied, observed or unconfirmed"
        );
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
            ("state", "applied"),
            ("state", "not-applied"),
        ] {
            let r = list_params(&pairs(&[bad]), now());
            assert!(matches!(r, Err(Error::BadRequest(_))), "{bad:?}: {r:?}");
        }
    }

    fn bad_request(q: &[(&str, &str)]) -> String {
        match list_params(&pairs(q), now()) {
            Err(Error::BadRequest(m)) => m,
            other => panic!("{q:?}: expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn huge_durations_reach_too_far_back_instead_of_panicking() {
        for since in [
            "9999999999999999d",
            "-9999999999999999d",
            "106751991167300d",
            "2562047788015215h",
            "-2562047788015215h",
            "9223372036854775807s",
        ] {
            let m = bad_request(&[("since", since)]);
            assert!(m.contains("too far back"), "{since}: {m}");
            let m = bad_request(&[("until", since)]);
            assert!(m.starts_with("until "), "{since}: {m}");
        }
        // Longer than any duration: a 400 from the duration parser, not an overflow.
        let m = bad_request(&[("since", "99999999999999999999999999d")]);
        assert!(m.contains("neither an RFC 3339 time nor a duration"), "{m}");
        // The largest that still lands after year -9999 is served.
        let p = list_params(&pairs(&[("since", "4000000d")]), now()).unwrap();
        assert!(p.query.since.unwrap() < now());
    }

    #[test]
    fn a_negative_duration_still_reaches_back() {
        let p = list_params(&pairs(&[("since", "-2d"), ("until", "-1h")]), now()).unwrap();
        assert_eq!(p.query.since, Some("2024-04-29T12:00:00Z".parse().unwrap()));
        assert_eq!(p.query.until, Some("2024-05-01T11:00:00Z".parse().unwrap()));
    }

    #[test]
    fn limits_are_capped_and_negative_ones_refused() {
        let limit = |v: &str| list_params(&pairs(&[("limit", v)]), now()).map(|p| p.query.limit);
        assert_eq!(limit("99999999999999999999999999999").unwrap(), MAX_LIMIT);
        assert_eq!(limit("18446744073709551615").unwrap(), MAX_LIMIT);
        assert_eq!(limit("+7").unwrap(), 7);
        assert!(bad_request(&[("limit", "-1")]).contains("must not be negative"));
        assert!(
            bad_request(&[("limit", "-99999999999999999999")]).contains("must not be negative")
        );
        for bad in ["1e3", "ten", "-", "+", "0x10", "1.5"] {
            assert!(
                bad_request(&[("limit", bad)]).contains("not a whole number"),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_times_say_what_is_wrong() {
        for (value, says) in [
            ("2024-13-01T00:00:00Z", "not an RFC 3339 time"),
            ("2024-05-01T25:00:00Z", "not an RFC 3339 time"),
            ("99999-01-01T00:00:00Z", "not an RFC 3339 time"),
            ("2024-05-01", "not an RFC 3339 time"),
            ("2024-05-01T12:00:00", "not an RFC 3339 time"),
            ("1h30", "neither an RFC 3339 time nor a duration"),
        ] {
            let m = bad_request(&[("since", value)]);
            assert!(m.starts_with("since ") && m.contains(says), "{value}: {m}");
        }
        // Far-future but valid times are fine: the store simply finds nothing.
        let p = list_params(&pairs(&[("until", "9999-12-30T00:00:00Z")]), now()).unwrap();
        assert!(p.query.until.is_some());
    }

    #[test]
    fn error_messages_do_not_echo_a_huge_value() {
        let huge = "9".repeat(1 << 20);
        let junk = "x".repeat(1 << 20);
        for (k, v) in [
            ("continue", &huge),
            ("continue", &junk),
            ("since", &junk),
            ("until", &huge),
            ("limit", &junk),
            ("operation", &junk),
            ("state", &junk),
        ] {
            let m = bad_request(&[(k, v)]);
            assert!(m.len() < 300, "{k}: a {} byte message", m.len());
        }
        // Control characters come back escaped.
        let m = bad_request(&[("operation", "x\u{1b}[8m")]);
        assert!(!m.contains('\u{1b}'), "{m:?}");
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2048, ..Default::default() })]

        /// Any value of any parameter parses or is a 400; nothing panics.
        #[test]
        fn any_value_of_any_parameter_is_ok_or_a_400(
            key in proptest::sample::select(vec![
                "kind", "name", "uid", "user", "operation", "state", "since", "until", "limit",
                "continue", "includeObject", "watch", "include", "other",
            ]),
            value in proptest::prop_oneof![
                proptest::prelude::any::<String>(),
                // Numbers of every size with every unit, the shape that overflowed.
                (
                    proptest::prelude::any::<i64>(),
                    proptest::sample::select(vec!["", "d", "h", "m", "s", "ms", "us", "ns", ".5h", "h30m"]),
                )
                    .prop_map(|(n, unit)| format!("{n}{unit}")),
                "[-+]?[0-9]{0,30}(\\.[0-9]{0,25})?(d|h|m|s|ms|us|ns|µs)?([0-9]{1,20}(h|m|s))?",
                "[+-]?[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}T[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})?",
            ],
            now_s in -377_705_116_800i64..253_402_207_199i64,
        ) {
            let now = Timestamp::from_second(now_s).unwrap();
            match list_params(&[(key.to_string(), value.clone())], now) {
                Ok(p) => proptest::prop_assert!(p.query.limit >= 1 && p.query.limit <= MAX_LIMIT),
                Err(Error::BadRequest(m)) => proptest::prop_assert!(m.len() < 400, "{}", m),
                Err(e) => proptest::prop_assert!(false, "{key}={value:?}: {e:?}"),
            }
        }
    }

    #[test]
    fn include_objects_is_recognised() {
        assert!(include_objects(&pairs(&[("include", "objects")])));
        assert!(!include_objects(&pairs(&[("include", "")])));
    }
}
