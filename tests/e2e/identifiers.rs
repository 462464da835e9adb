//! Identifiers: any schema, table or message prefix yields one valid NATS subject token
//! (README, "Subjects"), and a mixed-case publication name works.

use proptest::prelude::*;
use serde_json::json;

use super::expect::{DEADLINE, blocking};
use crate::support::service::{Service, Setup, wait_streaming};
use crate::support::{NatsServer, PgCluster};
use wal_listener::config::Config;
use wal_listener::script::Router;

fn default_router() -> Router {
    let (config, _) = Config::from_yaml("", &[], std::path::PathBuf::new()).expect("default config");
    Router::from_config(&config).expect("default script")
}

/// The one subject the default script gives an event, checked like a NATS client would.
fn subject_of(router: &Router, event: serde_json::Value) -> Result<String, TestCaseError> {
    let event = std::sync::Arc::new(wal_listener::event::from_json(&event, 0).map_err(TestCaseError::fail)?);
    let routed = router.route(&event).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(routed.len(), 1);
    let subject = routed[0].subject.clone();
    prop_assert!(!subject.contains([' ', '\t', '\r', '\n']), "{:?}", subject);
    prop_assert!(
        !subject.chars().any(|c| c.is_whitespace() || c.is_control()),
        "{:?}",
        subject
    );
    Ok(subject)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_name_is_exactly_one_valid_token(schema in any::<String>(), table in any::<String>(), prefix in any::<String>()) {
        let router = default_router();
        let subject = subject_of(&router, json!({"schema": schema, "table": table, "action": "INSERT"}))?;
        let tokens: Vec<&str> = subject.split('.').collect();
        prop_assert_eq!(tokens.len(), 2, "{:?}", subject);
        prop_assert!(tokens.iter().all(|t| !t.is_empty() && *t != "*" && *t != ">"));
        // Nothing but the forbidden characters changes: same number of characters.
        prop_assert_eq!(tokens[1].chars().count(), schema.chars().count() + 1 + table.chars().count());

        let subject = subject_of(&router, json!({"action": "MESSAGE", "prefix": prefix}))?;
        prop_assert_eq!(subject.split('.').count(), 2, "{:?}", subject);
    }
}

#[test]
fn the_rule_keeps_case_quotes_and_letters() {
    let router = default_router();
    let cases = [
        ("Sch.ema 1", "Ta*b>le", "Sch_ema_1_Ta_b_le"),
        ("ÜnïcødeSchema", "Tab\"quote", "ÜnïcødeSchema_Tab\"quote"),
        (
            "public",
            "new\nline\ttab\u{a0}nbsp\u{3000}",
            "public_new_line_tab_nbsp_",
        ),
        ("$sys", "a-b'c", "$sys_a-b'c"),
    ];
    for (schema, table, token) in cases {
        let event = json!({"schema": schema, "table": table, "action": "INSERT"});
        let subject = subject_of(&router, event).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(subject, format!("wal_listener.{token}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_and_a_mixed_case_publication_reach_valid_subjects() {
    let (pg, nats) = blocking(|| (PgCluster::start(), NatsServer::start()));
    pg.psql(
        "CREATE SCHEMA \"Sch.ema 1\";
         CREATE TABLE \"Sch.ema 1\".\"Ta*b>le\" (id int4 PRIMARY KEY);
         CREATE SCHEMA \"ÜnïcødeSchema\";
         CREATE TABLE \"ÜnïcødeSchema\".\"Tab\"\"quote\" (id int4 PRIMARY KEY);
         CREATE TABLE public.\"UPPER case\" (id int4 PRIMARY KEY);
         CREATE TABLE public.\"new\nline\" (id int4 PRIMARY KEY);
         CREATE TABLE public.unpublished (id int4 PRIMARY KEY);
         CREATE PUBLICATION \"Mixed Case Pub\" FOR TABLE \"Sch.ema 1\".\"Ta*b>le\", \"ÜnïcødeSchema\".\"Tab\"\"quote\",
           public.\"UPPER case\", public.\"new\nline\";",
    );
    let mut setup = Setup::new("ids");
    setup.publication = "Mixed Case Pub".into();
    let mut service = Service::start(&setup.yaml(&pg, &nats));
    blocking(|| wait_streaming(&pg, &setup.slot, &mut service));
    pg.psql(
        "INSERT INTO \"Sch.ema 1\".\"Ta*b>le\" VALUES (1);
         INSERT INTO \"ÜnïcødeSchema\".\"Tab\"\"quote\" VALUES (2);
         INSERT INTO public.unpublished VALUES (0);
         INSERT INTO public.\"UPPER case\" VALUES (3);
         INSERT INTO public.\"new\nline\" VALUES (4);",
    );
    let all = nats.wait_for_messages(&setup.topic, 4, DEADLINE).await;
    let topic = &setup.topic;
    let got: Vec<(String, String, String, i64, Option<&str>)> = all
        .iter()
        .map(|m| {
            let p = m.json();
            (
                m.subject.clone(),
                p["schema"].as_str().unwrap_or_default().to_string(),
                p["table"].as_str().unwrap_or_default().to_string(),
                p["data"]["id"].as_i64().unwrap_or(-1),
                m.header("Wal-Table"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                format!("{topic}.Sch_ema_1_Ta_b_le"),
                "Sch.ema 1".into(),
                "Ta*b>le".into(),
                1,
                Some("Ta*b>le")
            ),
            (
                format!("{topic}.ÜnïcødeSchema_Tab\"quote"),
                "ÜnïcødeSchema".into(),
                "Tab\"quote".into(),
                2,
                Some("Tab\"quote")
            ),
            (
                format!("{topic}.public_UPPER_case"),
                "public".into(),
                "UPPER case".into(),
                3,
                Some("UPPER case")
            ),
            (
                format!("{topic}.public_new_line"),
                "public".into(),
                "new\nline".into(),
                4,
                // A header value cannot hold a line break; the payload has the exact name.
                Some("new line")
            ),
        ],
        "only the publication's tables, each on one valid subject; log:\n{}",
        service.log()
    );
    blocking(|| service.terminate());
}
