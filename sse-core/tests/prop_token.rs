//! Property tests of session tokens (`resumable_sse_core::TokenKeys`), which come back from
//! clients in a cookie or a header: anything a client sends.
//!
//! - no text verifies unless the keys signed it, and verifying never panics;
//! - sign then verify gives back the claims (the expiry to the millisecond), for any session
//!   and any principal, also after a key rotation (the old key still verifies);
//! - any change to a genuine token makes it invalid;
//! - a principal a token cannot carry (empty, or too long) is refused by the hub, never
//!   silently given a new session on every connection (what this test found first).
//!
//! Cases: 512 per property by default, `PROPTEST_CASES` for a longer campaign
//! (docs/testing.md).

// A property that fails panics with the case, as a test should.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use resumable_sse_core::{SessionId, TokenClaims, TokenError, TokenKeys};

/// `cases` per property, or `PROPTEST_CASES` when set (a long campaign).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
    )
}

fn keys(a: [u8; 32]) -> TokenKeys {
    TokenKeys::new([a]).unwrap()
}

/// Claims expiring between ten minutes and a few years from now, whole milliseconds (what a token carries).
fn claims() -> impl Strategy<Value = TokenClaims> {
    (
        any::<[u8; 16]>(),
        600_000u64..100_000_000_000,
        proptest::option::of(
            prop_oneof![".{0,40}", "\\PC{1,512}", "[a-z@.]{1,512}"]
                .prop_filter("a principal tokens can carry", |p| {
                    !p.is_empty() && p.len() <= TokenKeys::MAX_PRINCIPAL_LEN
                }),
        ),
    )
        .prop_map(|(id, ms_ahead, principal)| {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis();
            let at = u64::try_from(now_ms).unwrap() + ms_ahead;
            TokenClaims {
                session: SessionId::from_bytes(id),
                expires_at: UNIX_EPOCH + Duration::from_millis(at),
                principal,
            }
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn no_text_verifies(token in "\\PC{0,200}|[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,60}|.{1000,1100}", key in any::<[u8; 32]>()) {
        prop_assert_eq!(keys(key).verify(&token, SystemTime::now()), Err(TokenError::Invalid));
    }

    #[test]
    fn sign_then_verify_is_the_identity(claims in claims(), old in any::<[u8; 32]>(), new in any::<[u8; 32]>()) {
        let before = keys(old);
        let token = before.sign(&claims);
        prop_assert_eq!(before.verify(&token, SystemTime::now()), Ok(claims.clone()));
        // After a rotation the old key still verifies what it signed.
        let rotated = TokenKeys::new([new, old]).unwrap();
        prop_assert_eq!(rotated.verify(&token, SystemTime::now()), Ok(claims.clone()));
        // And it expires when it says.
        prop_assert_eq!(before.verify(&token, claims.expires_at), Err(TokenError::Expired));
    }

    #[test]
    fn any_change_to_a_token_makes_it_invalid(
        claims in claims(),
        key in any::<[u8; 32]>(),
        at in any::<usize>(),
        with in "[A-Za-z0-9_.=+/-]",
        cut in any::<bool>(),
    ) {
        let keys = keys(key);
        let token = keys.sign(&claims);
        let at = at % token.len();
        let changed = if cut {
            format!("{}{}", &token[..at], &token[at + 1..])
        } else {
            prop_assume!(token[at..].chars().next() != with.chars().next());
            format!("{}{with}{}", &token[..at], &token[at + 1..])
        };
        prop_assert_eq!(keys.verify(&changed, SystemTime::now()), Err(TokenError::Invalid));
    }

    #[test]
    fn another_key_never_verifies(claims in claims(), a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
        prop_assume!(a != b);
        let token = keys(a).sign(&claims);
        prop_assert_eq!(keys(b).verify(&token, SystemTime::now()), Err(TokenError::Invalid));
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn the_hub_refuses_principals_a_token_cannot_carry(extra in 1usize..2000) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let store = std::sync::Arc::new(resumable_sse_store_memory::MemoryStore::default());
            let hub = resumable_sse_core::Hub::builder(store.clone(), store).build();
            let long = "p".repeat(TokenKeys::MAX_PRINCIPAL_LEN + extra);
            for bad in ["", long.as_str()] {
                let err = hub.find_session(None, Some(bad)).await.unwrap_err();
                prop_assert!(err.is_client_error(), "{err}");
            }
            let fits = "p".repeat(TokenKeys::MAX_PRINCIPAL_LEN);
            let found = hub.resolve_session(None, Some(&fits)).await.unwrap();
            let again = hub.find_session(Some(&found.token), Some(&fits)).await.unwrap();
            prop_assert_eq!(again.record.id, found.record.id, "the token finds its session");
            Ok(())
        })?;
    }
}
