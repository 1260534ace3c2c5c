//! [`Value`]: a task's returned value, still encoded, with its type; and how it is shown
//! without knowing its type (`Show`, a serde visitor that writes any MessagePack value as
//! bounded text).
//!
//! Must not know messages, frames or how values travel.

use std::any::TypeId;
use std::fmt;

use serde::de::DeserializeOwned;

use super::payload::Payload;
use super::status::CommandStatus;
use crate::{Error, TaskId};

/// The value a task returned, still encoded; [`Value::decode`] gives it its type back.
#[derive(Clone)]
pub struct Value {
    pub(crate) task: TaskId,
    pub(crate) bytes: Payload,
    pub(crate) returns: Option<(TypeId, &'static str)>,
}

impl Value {
    /// Decodes the value as the type the task returns.
    ///
    /// # Errors
    /// [`Error::WrongResultType`] when `T` is not the registered result type,
    /// [`Error::Decode`] when the bytes do not decode.
    pub fn decode<T: DeserializeOwned + 'static>(&self) -> Result<T, Error> {
        if let Some((id, name)) = self.returns
            && id != TypeId::of::<T>()
        {
            return Err(Error::WrongResultType {
                task: self.task,
                returns: name,
                wanted: std::any::type_name::<T>(),
            });
        }
        rmp_serde::from_slice(self.bytes.bytes()).map_err(|source| Error::Decode {
            what: format!("the result of task {}", self.task),
            wanted: std::any::type_name::<T>(),
            source,
        })
    }

    /// The encoded bytes (MessagePack).
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        self.bytes.bytes()
    }

    /// The name of the type the task returns, when known.
    #[must_use]
    pub fn type_name(&self) -> Option<&'static str> {
        self.returns.map(|(_, name)| name)
    }
}

/// Shows the value itself (decoded without knowing its type, as `0.5`, `"text"`, `[1, 2]`
/// or `{"key": 1}`), so `println!("{value}")` prints what the task returned. Long values are
/// cut after about 200 characters. [`Value::decode`] gives the typed value.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// `Value(0.5: f64)`: the value as [`Display`](fmt::Display) shows it, and the type the task
/// returns, without module paths.
impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.type_name() {
            Some(name) => write!(f, "Value({}: {})", self.shown(), short_type_name(name)),
            None => write!(f, "Value({})", self.shown()),
        }
    }
}

impl Value {
    /// The text [`Display`](fmt::Display) shows.
    fn shown(&self) -> String {
        let bytes = self.bytes.bytes();
        if self.returns.map(|(id, _)| id) == Some(TypeId::of::<CommandStatus>())
            && let Ok(status) = rmp_serde::from_slice::<CommandStatus>(bytes)
        {
            return status.to_string();
        }
        if self.type_name() == Some("()") && bytes == [NIL] {
            return "()".to_owned();
        }
        show_msgpack(bytes)
    }
}

/// The MessagePack encoding of `()` and `None`.
const NIL: u8 = 0xc0;

/// How many characters of a value `Display` shows before it stops.
const SHOW_LIMIT: usize = 200;

/// A MessagePack value as text, or a note that the bytes are not MessagePack.
fn show_msgpack(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    match serde::de::DeserializeSeed::deserialize(Show(&mut out), &mut deserializer) {
        Ok(()) => out,
        Err(_) => format!("<not MessagePack: {} B>", bytes.len()),
    }
}

/// Writes any serde value as text; the seed and visitor of [`show_msgpack`].
struct Show<'a>(&'a mut String);

impl Show<'_> {
    fn full(&self) -> bool {
        self.0.len() >= SHOW_LIMIT
    }

    fn push_text(&mut self, text: &str) {
        let room = SHOW_LIMIT.saturating_sub(self.0.len());
        if text.len() <= room {
            self.0.push_str(text);
        } else {
            let mut end = room;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            self.0.push_str(&text[..end]);
            self.0.push('…');
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Show<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Show<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any MessagePack value")
    }

    fn visit_bool<E>(mut self, v: bool) -> Result<(), E> {
        self.push_text(&v.to_string());
        Ok(())
    }

    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.push_text(&v.to_string());
        Ok(())
    }

    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.push_text(&v.to_string());
        Ok(())
    }

    fn visit_f32<E>(mut self, v: f32) -> Result<(), E> {
        self.push_text(&format!("{v:?}"));
        Ok(())
    }

    fn visit_f64<E>(mut self, v: f64) -> Result<(), E> {
        // Debug keeps the `.0` of whole numbers, so a float never looks like an integer.
        self.push_text(&format!("{v:?}"));
        Ok(())
    }

    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.push_text(&format!("{v:?}"));
        Ok(())
    }

    fn visit_bytes<E>(mut self, v: &[u8]) -> Result<(), E> {
        self.push_text(&format!("b\"{}\"", v.escape_ascii()));
        Ok(())
    }

    fn visit_none<E>(mut self) -> Result<(), E> {
        self.push_text("None");
        Ok(())
    }

    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.push_text("None");
        Ok(())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push('[');
        let mut items = 0usize;
        let mut hidden = 0usize;
        loop {
            if Show(out).full() {
                // Skipping is much cheaper than formatting, so a huge list stays fast.
                if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                    break;
                }
                hidden += 1;
                continue;
            }
            if items > 0 {
                out.push_str(", ");
            }
            if seq.next_element_seed(Show(out))?.is_none() {
                if items > 0 {
                    out.truncate(out.len() - 2);
                }
                break;
            }
            items += 1;
        }
        if hidden > 0 {
            out.push_str(&format!(", … {hidden} more"));
        }
        out.push(']');
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.0;
        out.push('{');
        let mut entries = 0usize;
        let mut hidden = 0usize;
        loop {
            if Show(out).full() {
                if map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_none()
                {
                    break;
                }
                hidden += 1;
                continue;
            }
            let mark = out.len();
            if entries > 0 {
                out.push_str(", ");
            }
            if map.next_key_seed(Show(out))?.is_none() {
                out.truncate(mark);
                break;
            }
            out.push_str(": ");
            map.next_value_seed(Show(out))?;
            entries += 1;
        }
        if hidden > 0 {
            out.push_str(&format!(", … {hidden} more"));
        }
        out.push('}');
        Ok(())
    }
}

/// `alloc::vec::Vec<alloc::string::String>` as `Vec<String>`: each path keeps its last
/// segment.
fn short_type_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut segment_start = 0;
    for (i, c) in name.char_indices() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            continue;
        }
        out.push_str(last_segment(&name[segment_start..i]));
        out.push(c);
        segment_start = i + c.len_utf8();
    }
    out.push_str(last_segment(&name[segment_start..]));
    out
}

fn last_segment(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;

    fn value<T: Serialize + 'static>(v: &T) -> Value {
        Value {
            task: TaskId { slot: 1, number: 7 },
            bytes: Payload::from_vec(rmp_serde::to_vec(v).unwrap()),
            returns: Some((TypeId::of::<T>(), std::any::type_name::<T>())),
        }
    }

    #[test]
    fn value_shows_what_the_task_returned() {
        #[derive(Serialize)]
        struct Point {
            x: i32,
            y: f64,
        }
        let map: std::collections::BTreeMap<String, u8> = [("a".to_owned(), 1)].into();
        let rows = [
            (value(&0.5f64), "0.5", "Value(0.5: f64)"),
            (value(&9.0f64), "9.0", "Value(9.0: f64)"),
            (value(&-3i32), "-3", "Value(-3: i32)"),
            (value(&"hi".to_owned()), "\"hi\"", "Value(\"hi\": String)"),
            (
                value(&vec!["a".to_owned(), "b".to_owned()]),
                "[\"a\", \"b\"]",
                "Value([\"a\", \"b\"]: Vec<String>)",
            ),
            (value(&Vec::<u8>::new()), "[]", "Value([]: Vec<u8>)"),
            (
                value(&map),
                "{\"a\": 1}",
                "Value({\"a\": 1}: BTreeMap<String, u8>)",
            ),
            (value(&Some(2u8)), "2", "Value(2: Option<u8>)"),
            (value(&None::<u8>), "None", "Value(None: Option<u8>)"),
            (value(&()), "()", "Value((): ())"),
            (
                value(&(1u8, true)),
                "[1, true]",
                "Value([1, true]: (u8, bool))",
            ),
            (
                value(&Point { x: 1, y: 2.5 }),
                "[1, 2.5]",
                "Value([1, 2.5]: Point)",
            ),
            (
                value(&CommandStatus {
                    code: Some(0),
                    signal: None,
                }),
                "exit code 0",
                "Value(exit code 0: CommandStatus)",
            ),
        ];
        for (value, display, debug) in rows {
            assert_eq!(value.to_string(), display);
            assert_eq!(format!("{value:?}"), debug);
        }
    }

    #[test]
    fn value_display_is_bounded_and_survives_garbage() {
        let big = value(&(0..100_000u32).collect::<Vec<_>>());
        let shown = big.to_string();
        assert!(shown.len() < SHOW_LIMIT + 40, "{shown}");
        assert!(shown.starts_with("[0, 1, 2, "), "{shown}");
        assert!(shown.ends_with(" more]"), "{shown}");
        let long = value(&"x".repeat(10_000)).to_string();
        assert!(
            long.len() < SHOW_LIMIT + 10 && long.ends_with('…'),
            "{long}"
        );
        let garbage = Value {
            task: TaskId { slot: 1, number: 1 },
            bytes: Payload::from_vec(vec![0xc1]),
            returns: None,
        };
        assert_eq!(format!("{garbage:?}"), "Value(<not MessagePack: 1 B>)");
    }

    #[test]
    fn type_names_lose_their_paths() {
        assert_eq!(
            short_type_name("alloc::vec::Vec<alloc::string::String>"),
            "Vec<String>"
        );
        assert_eq!(
            short_type_name("(u8, core::option::Option<f64>)"),
            "(u8, Option<f64>)"
        );
        assert_eq!(short_type_name("f64"), "f64");
    }
}
