//! End-to-end tests: the real binary between a throwaway PostgreSQL cluster and a throwaway
//! nats-server, each test with its own servers (so they run in parallel).

#[path = "../support/mod.rs"]
mod support;

mod backfill;
mod cli;
mod expect;
mod faults;
mod go_configs;
mod ha;
mod identifiers;
mod messages;
mod operator;
mod ops;
mod pipeline;
mod quickstart;
mod rabbit;
mod scripts;
mod tls;
mod toast;
mod types;
