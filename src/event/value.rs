//! Column values and their mapping from PostgreSQL text to JSON (SPEC §3).
//!
//! pgoutput sends every value in its text output form. The replication session pins
//! `DateStyle=ISO`, `TimeZone=UTC`, `IntervalStyle=postgres` and `extra_float_digits=3`, so the
//! text is stable and exact, and we only reshape it: integers become JSON integers (exact to 64
//! bits), floats JSON numbers, numerics exact strings, json/jsonb embedded as they are,
//! timestamps RFC 3339, arrays JSON arrays. A text that does not parse as its type claims is
//! never turned into a zero value: the original text is kept and the caller is told.

use serde_json::value::RawValue;

/// One column value, ready for JSON and for Lua.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// A finite float; NaN and infinities are [`Value::Text`].
    Float(f64),
    Text(String),
    /// json/jsonb, validated, embedded verbatim.
    Json(Box<RawValue>),
    Array(Vec<Value>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Text(a), Value::Text(b)) => a == b,
            (Value::Json(a), Value::Json(b)) => a.get() == b.get(),
            (Value::Array(a), Value::Array(b)) => a == b,
            _ => false,
        }
    }
}

/// How a type's text form maps to JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    Bool,
    Int,
    Float,
    /// numeric: an exact string.
    Numeric,
    Json,
    TimestampTz,
    Timestamp,
    /// Everything else: PostgreSQL's text form as a JSON string.
    Text,
}

/// A column's mapping: a scalar or an array of scalars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeMap {
    Scalar(Scalar),
    /// Arrays, any dimension; `delimiter` is `,` for every built-in type but box (`;`).
    Array(Scalar, u8),
}

/// The scalar mapping of a built-in type that is not text, by OID (`pg_type.h`).
pub fn builtin_scalar(oid: u32) -> Option<Scalar> {
    use Scalar::*;
    Some(match oid {
        16 => Bool,
        20 | 21 | 23 | 26 => Int,
        700 | 701 => Float,
        1700 => Numeric,
        114 | 3802 => Json,
        1184 => TimestampTz,
        1114 => Timestamp,
        _ => return None,
    })
}

/// The mapping of a built-in type OID without a catalog (the fallback of
/// [`super::types::TypeRegistry`], which also knows domains, user types and every array type);
/// unknown OIDs map to text.
pub fn type_map(oid: u32) -> TypeMap {
    use Scalar::*;
    if let Some(s) = builtin_scalar(oid) {
        return TypeMap::Scalar(s);
    }
    let array = |s| TypeMap::Array(s, b',');
    match oid {
        1000 => array(Bool),
        1005 | 1007 | 1016 | 1028 => array(Int),
        1021 | 1022 => array(Float),
        1231 => array(Numeric),
        199 | 3807 => array(Json),
        1185 => array(TimestampTz),
        1115 => array(Timestamp),
        1020 => TypeMap::Array(Text, b';'),
        // text[], varchar[], bpchar[], name[], uuid[], date[], time[], timetz[], interval[],
        // bytea[], inet[], cidr[], macaddr[], char[], xml[], bit[], varbit[], money[], jsonpath[],
        // tsvector[], oidvector-likes and the range/multirange arrays.
        1009 | 1015 | 1014 | 1003 | 2951 | 1182 | 1183 | 1270 | 1187 | 1001 | 1041 | 651 | 1040 | 1002 | 143 | 1561
        | 1563 | 791 | 4073 | 3643 | 3905 | 3907 | 3909 | 3911 | 3913 | 3927 | 1017 | 1018 | 1019 | 1027 | 629
        | 1034 | 775 | 2949 | 1010 | 1011 | 1012 | 1013 | 1263 | 1006 => array(Text),
        _ => TypeMap::Scalar(Text),
    }
}

/// Convert one column's text by its mapping. `Err` carries the value to publish anyway (the
/// original text) so the caller can count and log the problem.
pub fn convert(map: TypeMap, text: &str) -> Result<Value, Value> {
    match map {
        TypeMap::Scalar(s) => convert_scalar(s, text),
        TypeMap::Array(s, delimiter) => match parse_array(text, delimiter) {
            Some(tree) => {
                let mut ok = true;
                let value = tree.into_value(&mut |t| match convert_scalar(s, t) {
                    Ok(v) => v,
                    Err(v) => {
                        ok = false;
                        v
                    }
                });
                if ok { Ok(value) } else { Err(value) }
            }
            None => Err(Value::Text(text.to_string())),
        },
    }
}

fn convert_scalar(scalar: Scalar, text: &str) -> Result<Value, Value> {
    let keep = || Value::Text(text.to_string());
    match scalar {
        Scalar::Bool => match text {
            "t" | "true" => Ok(Value::Bool(true)),
            "f" | "false" => Ok(Value::Bool(false)),
            _ => Err(keep()),
        },
        Scalar::Int => text.parse::<i64>().map(Value::Int).map_err(|_| keep()),
        Scalar::Float => match text {
            "NaN" | "Infinity" | "-Infinity" => Ok(keep()),
            _ => match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Value::Float(f)),
                _ => Err(keep()),
            },
        },
        Scalar::Numeric => {
            let valid = text == "NaN"
                || text == "Infinity"
                || text == "-Infinity"
                || (!text.is_empty()
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'e' || b == b'E' || b == b'+'));
            if valid { Ok(keep()) } else { Err(keep()) }
        }
        Scalar::Json => match RawValue::from_string(text.to_string()) {
            Ok(raw) => Ok(Value::Json(raw)),
            Err(_) => Err(keep()),
        },
        Scalar::TimestampTz => rfc3339(text, true).map(Value::Text).ok_or_else(keep),
        Scalar::Timestamp => rfc3339(text, false).map(Value::Text).ok_or_else(keep),
        Scalar::Text => Ok(keep()),
    }
}

/// `2026-11-26 10:20:30.1+00` → `2026-11-26T10:20:30.100000Z` (with `zoned`), or without the
/// zone for `timestamp`: always six fractional digits, like `commitTime`, so every value has
/// one width and sorts as text. BC years become ISO 8601 astronomical years (`0044 BC` →
/// `-0043`); `infinity` and `-infinity` pass through. `None` for any other shape (the session
/// pins `TimeZone=UTC`, so a zoned value always ends in `+00`).
fn rfc3339(text: &str, zoned: bool) -> Option<String> {
    if let Some(out) = rfc3339_common(text, zoned) {
        return Some(out);
    }
    if text == "infinity" || text == "-infinity" {
        return Some(text.to_string());
    }
    let (body, bc) = match text.strip_suffix(" BC") {
        Some(b) => (b, true),
        None => (text, false),
    };
    let body = if zoned { body.strip_suffix("+00")? } else { body };
    let (date, time) = body.split_once(' ')?;
    let (year, month_day) = date.split_once('-')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let (month, day) = month_day.split_once('-')?;
    if year.len() < 4 || !year.bytes().all(|b| b.is_ascii_digit()) || !digits(month, 2) || !digits(day, 2) {
        return None;
    }
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':');
    let hms_ok = (0..3).all(|_| parts.next().is_some_and(|p| digits(p, 2))) && parts.next().is_none();
    if !hms_ok || fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Built by pushing the pieces: `format!` showed in the drain profile for every row.
    let mut out = String::with_capacity(27);
    if bc {
        let n: i64 = year.parse().ok()?;
        let astronomical = 1 - n;
        if astronomical < 0 {
            out.push('-');
        }
        let digits = itoa::Buffer::new().format(astronomical.abs()).to_string();
        out.extend(std::iter::repeat_n('0', 4usize.saturating_sub(digits.len())));
        out.push_str(&digits);
    } else {
        out.push_str(year);
    }
    for part in ["-", month, "-", day, "T", hms, ".", fraction] {
        out.push_str(part);
    }
    out.extend(std::iter::repeat_n('0', 6 - fraction.len()));
    if zoned {
        out.push('Z');
    }
    Some(out)
}

/// [`rfc3339`] for the shape nearly every value has — a four-digit year AD,
/// `YYYY-MM-DD HH:MM:SS[.f{1,6}]` — checked by position; `None` for anything else, which the
/// general parser then handles (it gives the same text for this shape).
fn rfc3339_common(text: &str, zoned: bool) -> Option<String> {
    let body = if zoned { text.strip_suffix("+00")? } else { text };
    let b = body.as_bytes();
    if b.len() < 19 || b.len() == 20 || b.len() > 26 {
        return None;
    }
    let digits = |from: usize, to: usize| b.get(from..to).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = b[4] == b'-' && b[7] == b'-' && b[10] == b' ' && b[13] == b':' && b[16] == b':';
    let fraction_ok = b.len() == 19 || (b[19] == b'.' && digits(20, b.len()));
    if !shape
        || !fraction_ok
        || !(digits(0, 4) && digits(5, 7) && digits(8, 10) && digits(11, 13) && digits(14, 16) && digits(17, 19))
    {
        return None;
    }
    let mut out = String::with_capacity(27);
    out.push_str(body.get(..10)?);
    out.push('T');
    out.push_str(body.get(11..19)?);
    out.push('.');
    let fraction = body.get(20..).unwrap_or("");
    out.push_str(fraction);
    out.extend(std::iter::repeat_n('0', 6 - fraction.len()));
    if zoned {
        out.push('Z');
    }
    Some(out)
}

/// A parsed array literal before element conversion.
#[derive(Debug, PartialEq)]
enum ArrayTree<'a> {
    Elem(Option<std::borrow::Cow<'a, str>>),
    List(Vec<ArrayTree<'a>>),
}

impl ArrayTree<'_> {
    fn into_value(self, convert: &mut impl FnMut(&str) -> Value) -> Value {
        match self {
            ArrayTree::Elem(None) => Value::Null,
            ArrayTree::Elem(Some(text)) => convert(&text),
            ArrayTree::List(items) => Value::Array(items.into_iter().map(|i| i.into_value(convert)).collect()),
        }
    }
}

/// Parse PostgreSQL's array output (`{1,NULL,"a,b"}`, nested braces, optional `[1:2]=`
/// dimension prefix). `None` if the text is not a well-formed array literal.
fn parse_array(text: &str, delimiter: u8) -> Option<ArrayTree<'_>> {
    let mut s = text;
    if s.starts_with('[') {
        // Explicit lower bounds: `[0:1]={…}`; the bounds do not change the JSON shape.
        let eq = s.find('=')?;
        s = &s[eq + 1..];
    }
    let mut parser = ArrayParser {
        s,
        pos: 0,
        delimiter,
        depth: 0,
    };
    let tree = parser.list()?;
    if parser.pos != s.len() {
        return None;
    }
    Some(tree)
}

struct ArrayParser<'a> {
    s: &'a str,
    pos: usize,
    delimiter: u8,
    depth: usize,
}

impl<'a> ArrayParser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn list(&mut self) -> Option<ArrayTree<'a>> {
        if self.peek()? != b'{' {
            return None;
        }
        self.depth += 1;
        if self.depth > 16 {
            return None;
        }
        self.pos += 1;
        let mut items = Vec::new();
        if self.peek()? == b'}' {
            self.pos += 1;
            self.depth -= 1;
            return Some(ArrayTree::List(items));
        }
        loop {
            let item = match self.peek()? {
                b'{' => self.list()?,
                b'"' => ArrayTree::Elem(Some(self.quoted()?)),
                _ => self.unquoted()?,
            };
            items.push(item);
            match self.peek()? {
                b'}' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Some(ArrayTree::List(items));
                }
                b if b == self.delimiter => self.pos += 1,
                _ => return None,
            }
        }
    }

    fn quoted(&mut self) -> Option<std::borrow::Cow<'a, str>> {
        self.pos += 1; // opening quote
        let start = self.pos;
        let bytes = self.s.as_bytes();
        let mut owned: Option<String> = None;
        loop {
            let b = *bytes.get(self.pos)?;
            match b {
                b'"' => {
                    let out = match owned {
                        Some(o) => std::borrow::Cow::Owned(o),
                        None => std::borrow::Cow::Borrowed(self.s.get(start..self.pos)?),
                    };
                    self.pos += 1;
                    return Some(out);
                }
                b'\\' => {
                    let o = owned.get_or_insert_with(|| self.s.get(start..self.pos).unwrap_or_default().to_string());
                    self.pos += 1;
                    let ch = self.s.get(self.pos..)?.chars().next()?;
                    o.push(ch);
                    self.pos += ch.len_utf8();
                }
                _ => {
                    let ch = self.s.get(self.pos..)?.chars().next()?;
                    if let Some(o) = owned.as_mut() {
                        o.push(ch);
                    }
                    self.pos += ch.len_utf8();
                }
            }
        }
    }

    fn unquoted(&mut self) -> Option<ArrayTree<'a>> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == self.delimiter || b == b'}' {
                break;
            }
            if b == b'{' || b == b'"' {
                return None;
            }
            self.pos += 1;
        }
        let raw = self.s.get(start..self.pos)?.trim();
        if raw.is_empty() {
            return None;
        }
        if raw.eq_ignore_ascii_case("NULL") {
            return Some(ArrayTree::Elem(None));
        }
        Some(ArrayTree::Elem(Some(std::borrow::Cow::Borrowed(raw))))
    }
}

#[cfg(test)]
#[path = "value_tests.rs"]
mod tests;
