//! The PubAck JetStream sends for every stored message, read without a JSON parser when it
//! has its usual shape (see [`plain_pub_ack`]).

/// Whether `payload` is a PubAck of the usual shape — a flat object such as
/// `{"stream":"s","seq":7,"duplicate":true}` of simple strings, unsigned integers and booleans,
/// without whitespace and without an `error` key — which is what serde_json would read as
/// stored. One ack arrives per message, and a full parse was 4 % of the drain's instructions;
/// anything else is left to serde_json.
pub(super) fn plain_pub_ack(payload: &[u8]) -> bool {
    let Some(inner) = payload.strip_prefix(b"{").and_then(|p| p.strip_suffix(b"}")) else {
        return false;
    };
    if inner.is_empty() {
        return false;
    }
    let simple = |s: &[u8]| s.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    inner.split(|&b| b == b',').all(|field| {
        let Some((key, value)) = field
            .iter()
            .position(|&b| b == b':')
            .map(|at| (&field[..at], &field[at + 1..]))
        else {
            return false;
        };
        let Some(key) = key.strip_prefix(b"\"").and_then(|k| k.strip_suffix(b"\"")) else {
            return false;
        };
        let key_ok = !key.is_empty() && key != b"error" && key.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let value_ok = match value {
            b"true" | b"false" => true,
            [b'"', text @ .., b'"'] => simple(text),
            digits => {
                (1..=19).contains(&digits.len())
                    && digits.iter().all(u8::is_ascii_digit)
                    && (digits.len() == 1 || digits[0] != b'0')
            }
        };
        key_ok && value_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_pub_acks_are_read_without_a_parser() {
        for ack in [
            r#"{"stream":"cdc_x","seq":7}"#,
            r#"{"stream":"cdc_x","seq":123456,"duplicate":true}"#,
            r#"{"stream":"a b","domain":"hub","seq":0}"#,
        ] {
            assert!(plain_pub_ack(ack.as_bytes()), "{ack}");
        }
        for other in [
            r#"{"error":{"code":503,"description":"x"}}"#,
            r#"{"stream":"s","seq":1,"error":"x"}"#,
            r#"{"stream":"s,"seq":1}"#,
            r#"{"stream":"s\"","seq":1}"#,
            r#"{"stream":"s","seq":-1}"#,
            r#"{"stream":"s","seq":1.5}"#,
            r#"{"stream":"s","seq":01}"#,
            "{\"stream\":\"\u{e9}\",\"seq\":1}",
            r#"{"stream": "s"}"#,
            r#"{"stream":"s","seq":1,}"#,
            r#"{"stream":"s":"t"}"#,
            r#"{}"#,
            "",
            "{",
            "not json",
        ] {
            assert!(!plain_pub_ack(other.as_bytes()), "{other}");
        }
    }
}
