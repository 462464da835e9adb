//! `cargo bench --bench route` — the per-event cost of routing, and what the script limits add.
//!
//! Routes the same 200,000 events (an INSERT with five columns) through the built-in default
//! script with: no limits, the instruction budget only (count hook every 10,000 instructions),
//! the memory cap only, and both (what the service runs). Prints µs per event and each
//! variant's ratio to the unlimited one, measured in the same invocation. Then, with both
//! limits, the user script of issue 14 (reads `event.data`, returns a computed subject, the
//! event and a header), which is called for every event like any custom script.

use std::sync::Arc;
use std::time::Instant;

use wal_listener::config::Config;
use wal_listener::event::{ChangeEvent, from_json};
use wal_listener::script::{DEFAULT_LUA, Limits, Router};

const EVENTS: usize = 200_000;

fn main() {
    let (config, _) = Config::from_yaml(
        "listener:\n  filter:\n    tables:\n      users: [insert, update]\n",
        &[],
        std::path::PathBuf::new(),
    )
    .expect("config");
    let event: Arc<ChangeEvent> = Arc::new(
        from_json(
            &serde_json::json!({"schema": "public", "table": "users", "action": "INSERT",
                "data": {"id": 42, "email": "a@b.c", "active": true, "score": 1.5, "meta": {"k": 1}}}),
            0,
        )
        .expect("event"),
    );
    let variants = [
        (
            "no limits",
            Limits {
                instructions: false,
                memory: false,
            },
        ),
        (
            "instruction budget only",
            Limits {
                instructions: true,
                memory: false,
            },
        ),
        (
            "memory cap only",
            Limits {
                instructions: false,
                memory: true,
            },
        ),
        (
            "both (the service)",
            Limits {
                instructions: true,
                memory: true,
            },
        ),
    ];
    let mut baseline = None;
    for (name, limits) in variants {
        let router = Router::with_limits(&config, "default.lua", DEFAULT_LUA, limits).expect("router");
        let per_event = per_event(&router, &event);
        let base = *baseline.get_or_insert(per_event);
        println!("{name:<26} {per_event:>6.2} µs/event  ratio {:.2}", per_event / base);
    }
    let user = r#"function route(event)
  local row = event.data
  return config.publisher.topic .. ".bench." .. (row.id % 16), event, { Shard = row.id % 16 }
end"#;
    let router = Router::new(&config, "route.lua", user).expect("router");
    let per_event = per_event(&router, &event);
    println!("{:<26} {per_event:>6.2} µs/event", "user script (issue 14)");
}

/// µs per routed event, after a warm-up: each event is routed to exactly one message.
fn per_event(router: &Router, event: &Arc<ChangeEvent>) -> f64 {
    for _ in 0..10_000 {
        let _ = router.route(event);
    }
    let started = Instant::now();
    for _ in 0..EVENTS {
        let routed = router.route(event).expect("routes");
        assert_eq!(routed.len(), 1);
    }
    started.elapsed().as_secs_f64() * 1e6 / EVENTS as f64
}
