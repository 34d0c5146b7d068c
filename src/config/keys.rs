//! Which keys the file may have, asked of the structs themselves.
//!
//! serde knows each struct's fields: with `deny_unknown_fields` it refuses any other key,
//! naming the fields it accepts. [`shape_at`] asks it: it deserialises the config from a
//! stand-in that walks down a key path and there offers a key no struct has, and keeps what
//! serde answers: the fields of the table there, or that it holds a table of free keys, a
//! list, or a plain value. So a field added to a struct is a key the loader knows, for the
//! unknown-key check and for the environment's lists, with no list of names beside it.

use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, MapAccess, Visitor};
use std::fmt;

/// What a key holds, by the structs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A table with these keys (a struct).
    Table(&'static [&'static str]),
    /// A table of free keys (`[agents]`).
    Map,
    /// A list (`calls.inbound_contexts`).
    List,
    /// A string, number or boolean.
    Value,
    /// No such key.
    Absent,
}

/// What the key at `path` (`["calls", "inbound_contexts"]`; `[]` for the whole file) holds
/// in `T`.
pub fn shape_at<T: DeserializeOwned>(path: &[&str]) -> Shape {
    match T::deserialize(Probe { path }) {
        Err(Answer(shape)) => shape,
        Ok(_) => Shape::Value,
    }
}

/// The key the probe offers where the path ends: no field is named "".
const NO_FIELD: &str = "";

/// serde's answer, as the probe's error: every probe ends in one.
#[derive(Debug)]
struct Answer(Shape);

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for Answer {}

impl de::Error for Answer {
    /// A type refused the probe's table: it is a plain value.
    fn custom<T: fmt::Display>(_: T) -> Self {
        Answer(Shape::Value)
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Answer(if field == NO_FIELD {
            Shape::Table(expected)
        } else {
            Shape::Absent
        })
    }
}

struct Probe<'a> {
    path: &'a [&'a str],
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Answer;

    /// Types that read any value (an agent entry, the string types) get a table.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Answer> {
        visitor.visit_map(Walk::new(self.path))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Answer> {
        if self.path.is_empty() {
            return Err(Answer(Shape::Table(fields)));
        }
        visitor.visit_map(Walk::new(self.path))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Answer> {
        if self.path.is_empty() {
            return Err(Answer(Shape::Map));
        }
        visitor.visit_map(Walk::new(self.path))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Answer> {
        Err(Answer(Shape::List))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Answer> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Answer> {
        visitor.visit_newtype_struct(self)
    }

    // A plain value's visitor refuses the table: `Shape::Value`.
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct tuple tuple_struct enum identifier ignored_any
    }
}

/// A table of one key: the path's next key, whose value is the rest of the path; or, where
/// the path ends, [`NO_FIELD`], whose value ends the walk.
struct Walk<'a> {
    key: Option<&'a str>,
    rest: Option<&'a [&'a str]>,
}

impl<'a> Walk<'a> {
    fn new(path: &'a [&'a str]) -> Self {
        match path.split_first() {
            Some((key, rest)) => Walk {
                key: Some(key),
                rest: Some(rest),
            },
            None => Walk {
                key: Some(NO_FIELD),
                rest: None,
            },
        }
    }
}

impl<'de> MapAccess<'de> for Walk<'_> {
    type Error = Answer;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Answer> {
        match self.key.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Answer> {
        match self.rest {
            Some(path) => seed.deserialize(Probe { path }),
            None => Err(Answer(Shape::Value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgiConfig, Config};

    #[test]
    fn serde_tells_what_each_key_holds() {
        let agi = &[
            "listen",
            "decision_timeout",
            "reject",
            "max_sessions",
            "idle_timeout",
            "max_sessions_per_source",
            "secret",
            "secret_file",
        ];
        let cases: &[(&[&str], Shape)] = &[
            (
                &[],
                Shape::Table(&[
                    "ami", "agi", "zammad", "numbers", "calls", "agents", "admin", "state", "log",
                ]),
            ),
            (&["agi"], Shape::Table(agi)),
            (&["ami", "address"], Shape::Value),
            (&["ami", "secret"], Shape::Value),
            (&["agi", "reject"], Shape::Value),
            (&["agi", "decision_timeout"], Shape::Value),
            (&["agi", "max_sessions"], Shape::Value),
            (&["calls", "inbound_contexts"], Shape::List),
            (&["calls", "trunk_channel"], Shape::Value),
            (&["agents"], Shape::Map),
            (&["agents", "201"], Shape::Table(&["name", "number"])),
            (&["agents", "201", "name"], Shape::Value),
            (&["amy"], Shape::Absent),
            (&["ami", "secert"], Shape::Absent),
            (&["agents", "201", "nmae"], Shape::Absent),
            (&["ami", "address", "deeper"], Shape::Value),
        ];
        for (path, want) in cases {
            assert_eq!(shape_at::<Config>(path), *want, "{path:?}");
        }
        assert_eq!(shape_at::<AgiConfig>(&[]), Shape::Table(agi));
    }
}
