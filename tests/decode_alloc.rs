//! The decoder allocates in proportion to its input, whatever counts and lengths the input
//! declares: measured with a counting global allocator, on arbitrary and adversarial bytes.
//!
//! Its own test binary, with a single test, so that nothing else allocates while a decode is
//! being measured.

use std::alloc::System;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use wal_listener::decode::{Column, TupleValue, decode};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The most a decoded item may cost per input byte it consumed: a one-byte `n` column
/// becomes one `TupleValue`, a ten-byte Relation column one `Column`. Everything else (names,
/// prefixes) is a copy of at most its own bytes; values are slices, not copies.
fn per_byte() -> usize {
    std::mem::size_of::<TupleValue>().max(std::mem::size_of::<Column>().div_ceil(10) + 1) + 1
}

/// Fixed costs: the Bytes' shared header when a value is sliced, error values.
const OVERHEAD: usize = 256;

/// Bytes allocated (including growth by reallocation) while decoding `input`.
fn allocated_by_decode(input: &Bytes) -> usize {
    let region = Region::new(GLOBAL);
    let result = decode(input);
    let stats = region.change();
    drop(result);
    stats.bytes_allocated + usize::try_from(stats.bytes_reallocated.max(0)).unwrap_or(0)
}

/// Hand-made prefixes that declare huge counts and lengths, then end (or go on with junk).
fn adversarial() -> impl Strategy<Value = Vec<u8>> {
    let huge_i16 = i16::MAX.to_be_bytes();
    let huge_i32 = i32::MAX.to_be_bytes();
    let heads: Vec<Vec<u8>> = vec![
        // Insert, N, 32767 columns
        [&b"I\0\0\0\x01N"[..], &huge_i16].concat(),
        // Update with an old key tuple of 32767 columns
        [&b"U\0\0\0\x01K"[..], &huge_i16].concat(),
        // Relation with 32767 columns
        [&b"R\0\0\0\x01s\0t\0d"[..], &huge_i16].concat(),
        // Truncate of i32::MAX relations
        [&b"T"[..], &huge_i32, b"\0"].concat(),
        // A text value of i32::MAX bytes
        [&b"I\0\0\0\x01N\0\x01t"[..], &huge_i32].concat(),
        // A logical message of i32::MAX bytes
        [&b"M\x01\0\0\0\0\0\0\0\x01p\0"[..], &huge_i32].concat(),
    ];
    (proptest::sample::select(heads), vec(any::<u8>(), 0..512)).prop_map(|(mut head, tail)| {
        head.extend_from_slice(&tail);
        head
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn decoding_allocates_in_proportion_to_the_input(
        input in prop_oneof![
            vec(any::<u8>(), 0..2048),
            (proptest::sample::select(b"BCORYIUDTM".to_vec()), vec(any::<u8>(), 0..2048))
                .prop_map(|(tag, mut body)| { body.insert(0, tag); body }),
            adversarial(),
            // Many one-byte null columns: the densest input there is.
            (0usize..2000).prop_map(|n| {
                let count = i16::try_from(n).unwrap_or(i16::MAX).to_be_bytes();
                let mut v = [&b"I\0\0\0\x01N"[..], &count].concat();
                v.extend(std::iter::repeat_n(b'n', n));
                v
            }),
        ]
    ) {
        let input = Bytes::from(input);
        let allowed = per_byte() * input.len() + OVERHEAD;
        let used = allocated_by_decode(&input);
        prop_assert!(used <= allowed, "{} input bytes, {} allocated, {} allowed", input.len(), used, allowed);
    }
}
