//! Property tests of `POST /publish` (`resumable_sse_axum::publish`): whatever body a
//! publisher sends (any bytes, any JSON, the expected fields with any values), the answer is a
//! 2xx or a 4xx with a JSON error, never a 5xx nor a panic; and what a 200 says was stored is
//! stored, with its data exactly as sent (unless its id repeats an earlier publisher id:
//! then the earlier event is the answer).
//!
//! The router is called in process (`tower::ServiceExt::oneshot`): the properties are about
//! the handler, and thousands of cases over sockets would take minutes. Cases: 1 024 per
//! property by default, `PROPTEST_CASES` for a longer campaign (docs/testing.md).

// Helpers panic on what a test would: a broken server.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use axum::body::Body;
use http::{Request, StatusCode};
use proptest::prelude::*;
use resumable_sse_axum::SseLayer;
use resumable_sse_core::{Config, Hub, StreamName};
use serde_json::Value;
use tower::ServiceExt as _;

/// `cases` per property, or `PROPTEST_CASES` when set (a long campaign).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
    )
}

/// One runtime and one hub (over the memory store, 4 KiB events at most) for every case.
fn shared() -> &'static (tokio::runtime::Runtime, Hub, axum::Router) {
    static SHARED: OnceLock<(tokio::runtime::Runtime, Hub, axum::Router)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hub = runtime.block_on(async {
            resumable_sse_axum::memory_hub(Config::default().with_max_event_bytes(4096))
        });
        let router = resumable_sse_axum::router(SseLayer::new(hub.clone()));
        (runtime, hub, router)
    })
}

/// Posts `body` with `content_type`; the status and the JSON answer (which every answer is).
fn post(body: Vec<u8>, content_type: &str) -> (StatusCode, Value) {
    let (runtime, _, router) = shared();
    runtime.block_on(async {
        let request = Request::post("/publish")
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let answer = serde_json::from_slice(&bytes)
            .unwrap_or_else(|err| panic!("{status}: not JSON ({err}): {bytes:?}"));
        (status, answer)
    })
}

/// The answer must be a 2xx or a 4xx with a JSON error.
fn check(status: StatusCode, answer: &Value) -> Result<(), TestCaseError> {
    prop_assert!(
        status.is_success() || status.is_client_error(),
        "{status}: {answer}"
    );
    if status.is_client_error() {
        prop_assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
        prop_assert!(answer["message"].is_string(), "{answer}");
    }
    Ok(())
}

/// Any JSON value, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,20}|.{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text for a field: names that are valid or nearly, CR/LF/NUL, long, non-ASCII.
fn field_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_.:/@-]{1,20}",
        "[A-Za-z0-9_.:/@ \r\n\0-]{0,20}",
        ".{0,20}",
        "x{120,140}",
        "x{250,260}",
        "@session:[0-9a-f]{32}",
        "[0-9a-f]{30,34}",
    ]
}

/// A publish body with the expected fields, each absent or any value.
fn publish_body() -> impl Strategy<Value = Value> {
    let field = |text: BoxedStrategy<String>| {
        proptest::option::of(prop_oneof![
            4 => text.prop_map(Value::from),
            1 => json_value(),
        ])
    };
    (
        field(field_text().boxed()),
        field(field_text().boxed()),
        field(field_text().boxed()),
        field(field_text().boxed()),
        proptest::option::of(prop_oneof![
            "\\PC{0,40}|.{0,40}|[\r\n\0 a]{0,10}".prop_map(Value::from),
            json_value(),
            "x{4090,4100}".prop_map(Value::from),
        ]),
        proptest::option::of(("[a-z]{1,8}", json_value())),
    )
        .prop_map(|(stream, session, event, id, data, extra)| {
            let mut body = serde_json::Map::new();
            for (key, value) in [
                ("stream", stream),
                ("session", session),
                ("event", event),
                ("id", id),
                ("data", data),
            ] {
                if let Some(value) = value {
                    body.insert(key.to_owned(), value);
                }
            }
            if let Some((key, value)) = extra {
                body.insert(key, value);
            }
            Value::Object(body)
        })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn any_bytes_get_a_2xx_or_a_4xx(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        content_type in "application/json|application/json; charset=utf-8|text/plain|",
    ) {
        let (status, answer) = post(bytes, &content_type);
        check(status, &answer)?;
    }

    #[test]
    fn any_json_gets_a_2xx_or_a_4xx(value in json_value()) {
        let (status, answer) = post(value.to_string().into_bytes(), "application/json");
        check(status, &answer)?;
    }

    #[test]
    fn publish_bodies_get_a_2xx_or_a_4xx_and_a_200_is_stored(body in publish_body()) {
        let (status, answer) = post(body.to_string().into_bytes(), "application/json");
        check(status, &answer)?;
        // A publisher id is an idempotency key (ADR 0004): a repeated one (cases share the
        // hub) answers the first event, stored with the first data.
        if status == StatusCode::OK && answer["duplicate"] == false {
            let (runtime, hub, _) = shared();
            let stream = StreamName::new(answer["stream"].as_str().unwrap()).unwrap();
            let position = answer["position"].as_u64().unwrap();
            let page = runtime
                .block_on(hub.buffer().read(&stream, position - 1, 1))
                .unwrap();
            let stored = &page.events[0];
            let expected = match &body["data"] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            prop_assert_eq!(&*stored.data, expected.as_str(), "data exactly as sent");
            if let Some(name) = body["event"].as_str() {
                prop_assert_eq!(stored.event.as_deref(), Some(name));
            }
        }
    }
}
