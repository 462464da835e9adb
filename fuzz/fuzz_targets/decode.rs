//! Fuzz the pgoutput decoder: any bytes must decode or return an error — never panic, never
//! hang, never allocate beyond what the input can justify (libFuzzer's `-rss_limit_mb` and
//! `-malloc_limit_mb` catch that).
//!
//! The decoder is pure (no I/O, no other module of wal-listener), so it is compiled here on
//! its own from its source files: the fuzz build needs only `bytes` and `thiserror`, not the
//! whole service.

#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../src/decode/mod.rs"]
mod decode;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = bytes::Bytes::copy_from_slice(data);
    if let Ok(message) = decode::decode(&input) {
        // Whatever decodes is a complete message: its tag is the first byte.
        assert_eq!(Some(&message.tag()), data.first());
    }
});
