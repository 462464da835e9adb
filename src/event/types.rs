//! The type registry: what pgoutput's Relation message does not say about a column's type.
//!
//! A Relation message gives each column's type OID and nothing else. That is enough for the
//! built-in scalar types, which [`super::value`] maps by OID, but not for:
//!
//! - **domains** — a domain maps as its base type, recursively (a domain over a domain over
//!   `int8` is an integer; a domain over `int8[]` an array of integers);
//! - **arrays** — any array type, built-in or user-defined (arrays of enums, of domains, of
//!   composites, of extension types), maps to a JSON array of its element type's mapping,
//!   split on the element type's `typdelim`;
//! - everything else user-defined (enums, composites, ranges, extension base types such as
//!   citext) maps to PostgreSQL's text, which is also what an unknown OID falls back to.
//!
//! The registry is plain data filled from `pg_type` (see `crate::catalog`): at session start
//! with every domain, every array type and every user type, and again, lazily, whenever a
//! Relation or Type message names a user type (OID ≥ 16384) it does not know — a type created
//! while the service runs. [`super::Assembler`] reports those OIDs; the transform loop looks
//! them up and hands the rows back before it decodes the next message.
//!
//! The catalog is read *now* while the WAL being decoded may be older. That is harmless for
//! domains (their base type cannot change) and for arrays (their element type cannot change);
//! a type dropped since maps to text.

use std::collections::HashMap;

use super::value::{Scalar, TypeMap, builtin_scalar, type_map};

/// OIDs from here up belong to user-created objects (`FirstNormalObjectId`).
pub const FIRST_NORMAL_OID: u32 = 16_384;

/// How deep domains and arrays may nest before we give up and use text (a guard: PostgreSQL
/// does not allow cycles).
const MAX_DEPTH: usize = 16;

/// What the registry needs to know about one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    /// `typtype = 'd'`: maps as `base`.
    Domain { base: u32 },
    /// A true array type (its element type's `typarray` points back at it).
    Array { elem: u32, delimiter: u8 },
    /// Anything else: text.
    Other,
}

/// One `pg_type` row, reduced to what the mapping needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgType {
    pub oid: u32,
    pub kind: TypeKind,
}

/// OID → kind, for the types the built-in table does not cover.
#[derive(Debug, Default, Clone)]
pub struct TypeRegistry {
    types: HashMap<u32, TypeKind>,
}

impl TypeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace one type.
    pub fn insert(&mut self, t: PgType) {
        self.types.insert(t.oid, t.kind);
    }

    /// Number of types known.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The mapping for a column of type `oid`.
    pub fn map(&self, oid: u32) -> TypeMap {
        self.map_at(oid, 0)
    }

    fn map_at(&self, oid: u32, depth: usize) -> TypeMap {
        if depth > MAX_DEPTH {
            return TypeMap::Scalar(Scalar::Text);
        }
        if let Some(s) = builtin_scalar(oid) {
            return TypeMap::Scalar(s);
        }
        match self.types.get(&oid) {
            Some(TypeKind::Domain { base }) => self.map_at(*base, depth + 1),
            Some(TypeKind::Array { elem, delimiter }) => match self.map_at(*elem, depth + 1) {
                TypeMap::Scalar(s) => TypeMap::Array(s, *delimiter),
                // An array of a domain over an array: each element is itself an array
                // literal; it is kept as PostgreSQL's text of that element.
                TypeMap::Array(..) => TypeMap::Array(Scalar::Text, *delimiter),
            },
            Some(TypeKind::Other) => TypeMap::Scalar(Scalar::Text),
            // Not in the catalog we read (or no catalog at all, as in `wal-listener route`):
            // the built-in table.
            None => type_map(oid),
        }
    }

    /// Push the user type OIDs that the mapping of `oid` depends on and that are not known
    /// yet (the type itself, a domain's base, an array's element, …).
    pub fn missing(&self, oid: u32, out: &mut Vec<u32>) {
        let mut oid = oid;
        for _ in 0..=MAX_DEPTH {
            match self.types.get(&oid) {
                Some(TypeKind::Domain { base }) => oid = *base,
                Some(TypeKind::Array { elem, .. }) => oid = *elem,
                Some(TypeKind::Other) => return,
                None => {
                    if oid >= FIRST_NORMAL_OID && !out.contains(&oid) {
                        out.push(oid);
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> TypeRegistry {
        let mut r = TypeRegistry::new();
        for (oid, kind) in [
            // domain positive_big over int8, domain pb2 over it, domain ids over int8[]
            (20_000, TypeKind::Domain { base: 20 }),
            (20_001, TypeKind::Domain { base: 20_000 }),
            (20_002, TypeKind::Domain { base: 1016 }),
            // enum mood and its array
            (20_010, TypeKind::Other),
            (
                20_011,
                TypeKind::Array {
                    elem: 20_010,
                    delimiter: b',',
                },
            ),
            // array of the domain pb2
            (
                20_012,
                TypeKind::Array {
                    elem: 20_001,
                    delimiter: b',',
                },
            ),
            // array of the domain over int8[]
            (
                20_013,
                TypeKind::Array {
                    elem: 20_002,
                    delimiter: b',',
                },
            ),
            // information_schema.cardinal_number: a domain over int4 below 16384
            (13_000, TypeKind::Domain { base: 23 }),
            // _regclass, an array type the built-in table does not list
            (
                2210,
                TypeKind::Array {
                    elem: 2205,
                    delimiter: b',',
                },
            ),
        ] {
            r.insert(PgType { oid, kind });
        }
        r
    }

    #[test]
    fn domains_map_as_their_base_type() {
        let r = registry();
        assert_eq!(r.map(20_000), TypeMap::Scalar(Scalar::Int));
        assert_eq!(r.map(20_001), TypeMap::Scalar(Scalar::Int));
        assert_eq!(r.map(20_002), TypeMap::Array(Scalar::Int, b','));
        assert_eq!(r.map(13_000), TypeMap::Scalar(Scalar::Int));
    }

    #[test]
    fn arrays_map_their_elements() {
        let r = registry();
        assert_eq!(r.map(20_011), TypeMap::Array(Scalar::Text, b','));
        assert_eq!(r.map(20_012), TypeMap::Array(Scalar::Int, b','));
        assert_eq!(r.map(20_013), TypeMap::Array(Scalar::Text, b','));
        assert_eq!(r.map(2210), TypeMap::Array(Scalar::Text, b','));
        assert_eq!(r.map(20_010), TypeMap::Scalar(Scalar::Text));
    }

    #[test]
    fn unknown_oids_fall_back_to_the_builtin_table() {
        let r = TypeRegistry::new();
        assert_eq!(r.map(1016), TypeMap::Array(Scalar::Int, b','));
        assert_eq!(r.map(20), TypeMap::Scalar(Scalar::Int));
        assert_eq!(r.map(99_999), TypeMap::Scalar(Scalar::Text));
    }

    #[test]
    fn missing_lists_unknown_user_oids_along_the_chain() {
        let mut r = registry();
        let mut out = Vec::new();
        r.missing(20_001, &mut out);
        r.missing(25, &mut out);
        r.missing(13_500, &mut out);
        assert!(out.is_empty(), "{out:?}");
        r.missing(30_000, &mut out);
        r.missing(30_000, &mut out);
        assert_eq!(out, [30_000]);
        r.insert(PgType {
            oid: 30_000,
            kind: TypeKind::Array {
                elem: 30_001,
                delimiter: b',',
            },
        });
        out.clear();
        r.missing(30_000, &mut out);
        assert_eq!(out, [30_001], "the element is looked up next");
    }

    #[test]
    fn cycles_cannot_hang() {
        let mut r = TypeRegistry::new();
        r.insert(PgType {
            oid: 40_000,
            kind: TypeKind::Domain { base: 40_001 },
        });
        r.insert(PgType {
            oid: 40_001,
            kind: TypeKind::Domain { base: 40_000 },
        });
        assert_eq!(r.map(40_000), TypeMap::Scalar(Scalar::Text));
        let mut out = Vec::new();
        r.missing(40_000, &mut out);
        assert!(out.is_empty());
    }
}
