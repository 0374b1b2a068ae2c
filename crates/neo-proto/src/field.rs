//! How each Rust type of a packet argument maps to msgpack (protocol.md §3).
//!
//! Each type encodes itself into a `Vec<u8>` and decodes itself straight
//! from a packet's bytes through a [`Reader`], charging what it allocates.

use bytes::Bytes;

use crate::reader::{Reader, Token};
use crate::types::{
    Address, CellState, Checksum, ClusterState, ErrorCode, NodeId, NodeState, NodeType, Oid, Tid,
};
use crate::value::{self, Value, ValueError};

/// Why a msgpack value is not a valid argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// The value has the wrong msgpack type.
    #[error("expected {expected}, found {found}")]
    Type {
        /// What the layout requires.
        expected: &'static str,
        /// The msgpack type received.
        found: &'static str,
    },
    /// Right type, unacceptable content.
    #[error("{0}")]
    Invalid(String),
    /// Bytes that are not msgpack, or more memory needed than the packet
    /// justifies.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A problem inside an element of a list, map or record.
    #[error("element {index}: {inner}")]
    Element {
        /// Position in the container.
        index: usize,
        /// What was wrong with it.
        inner: Box<FieldError>,
    },
}

impl FieldError {
    fn type_error(expected: &'static str, found: &Token) -> FieldError {
        FieldError::Type {
            expected,
            found: found.type_name(),
        }
    }

    /// Wraps an error found in element `index` of a container.
    pub fn at(self, index: usize) -> FieldError {
        FieldError::Element {
            index,
            inner: Box::new(self),
        }
    }
}

/// A packet argument (or part of one): encodable to, decodable from msgpack.
pub trait Field: Sized {
    /// Appends the wire form.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads the wire form, which must come next.
    fn decode(reader: &mut Reader) -> Result<Self, FieldError>;
}

impl Field for Value {
    fn encode(&self, out: &mut Vec<u8>) {
        Value::encode(self, out)
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        Ok(reader.value()?)
    }
}

impl Field for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        value::write_bool(out, *self)
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        match reader.token()? {
            Token::Bool(b) => Ok(b),
            other => Err(FieldError::type_error("bool", &other)),
        }
    }
}

macro_rules! int_field {
    ($($ty:ty => $write:ident as $wide:ty),*) => {$(
        impl Field for $ty {
            fn encode(&self, out: &mut Vec<u8>) {
                value::$write(out, <$wide>::from(*self))
            }
            fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
                match reader.token()? {
                    Token::Int(i) => <$ty>::try_from(i).map_err(|_| {
                        FieldError::Invalid(format!(
                            "integer {i} out of range for {}", stringify!($ty)
                        ))
                    }),
                    other => Err(FieldError::type_error("int", &other)),
                }
            }
        }
    )*};
}

int_field!(u8 => write_uint as u64, u16 => write_uint as u64, u32 => write_uint as u64,
    u64 => write_uint as u64, i32 => write_int as i64, i64 => write_int as i64);

impl Field for f64 {
    fn encode(&self, out: &mut Vec<u8>) {
        value::write_f64(out, *self)
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        match reader.token()? {
            Token::Float(f) => Ok(f),
            other => Err(FieldError::type_error("float", &other)),
        }
    }
}

impl Field for Bytes {
    fn encode(&self, out: &mut Vec<u8>) {
        value::write_bin(out, self)
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        match reader.token()? {
            Token::Bin(b) => Ok(b),
            other => Err(FieldError::type_error("bin", &other)),
        }
    }
}

/// Text travels as UTF-8 in a bin, never as a msgpack str.
impl Field for String {
    fn encode(&self, out: &mut Vec<u8>) {
        value::write_bin(out, self.as_bytes())
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        let bytes = Bytes::decode(reader)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| FieldError::Invalid("text is not UTF-8".to_owned()))?;
        reader.charge(text.len())?;
        Ok(text.to_owned())
    }
}

fn fixed_bin<const N: usize>(reader: &mut Reader) -> Result<[u8; N], FieldError> {
    let bytes = Bytes::decode(reader)?;
    <[u8; N]>::try_from(&bytes[..])
        .map_err(|_| FieldError::Invalid(format!("expected {N} bytes, found {}", bytes.len())))
}

macro_rules! id_field {
    ($($ty:ident),*) => {$(
        impl Field for $ty {
            fn encode(&self, out: &mut Vec<u8>) {
                value::write_bin(out, &self.to_bytes())
            }
            fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
                fixed_bin::<8>(reader).map($ty::from_bytes)
            }
        }
    )*};
}

id_field!(Oid, Tid);

impl Field for Checksum {
    fn encode(&self, out: &mut Vec<u8>) {
        value::write_bin(out, &self.0)
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        fixed_bin::<20>(reader).map(Checksum)
    }
}

impl Field for NodeId {
    fn encode(&self, out: &mut Vec<u8>) {
        value::write_int(out, self.0.into())
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        i32::decode(reader).map(NodeId)
    }
}

/// An enum member from an ext token whose payload is a msgpack integer.
fn enum_value(token: Token, ext_type: i8, name: &'static str) -> Result<u64, FieldError> {
    let Token::Ext(ty, payload) = token else {
        return Err(FieldError::type_error(name, &token));
    };
    if ty != ext_type {
        return Err(FieldError::Invalid(format!(
            "expected ext type {ext_type} ({name}), found ext type {ty}"
        )));
    }
    let mut payload = Reader::new(payload);
    match (payload.token(), payload.is_at_end()) {
        (Ok(Token::Int(i)), true) => u64::try_from(i).ok(),
        _ => None,
    }
    .ok_or_else(|| FieldError::Invalid(format!("bad {name} payload")))
}

macro_rules! enum_field {
    ($($ty:ident),*) => {$(
        impl Field for $ty {
            fn encode(&self, out: &mut Vec<u8>) {
                value::write_enum(out, $ty::EXT_TYPE, *self as u8)
            }
            fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
                let number = enum_value(reader.token()?, $ty::EXT_TYPE, stringify!($ty))?;
                $ty::from_value(number).ok_or_else(|| {
                    FieldError::Invalid(format!("{number} is not a {}", stringify!($ty)))
                })
            }
        }
    )*};
}

enum_field!(CellState, ClusterState, NodeState, NodeType);

/// In the `Error` packet the code is a plain integer; an ext is tolerated.
impl Field for ErrorCode {
    fn encode(&self, out: &mut Vec<u8>) {
        value::write_uint(out, *self as u64)
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        let number = match reader.token()? {
            Token::Int(i) => u64::try_from(i).unwrap_or(u64::MAX),
            ext @ Token::Ext(..) => enum_value(ext, ErrorCode::EXT_TYPE, "ErrorCode")?,
            other => return Err(FieldError::type_error("int", &other)),
        };
        ErrorCode::from_value(number)
            .ok_or_else(|| FieldError::Invalid(format!("{number} is not an ErrorCode")))
    }
}

impl<T: Field> Field for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => value::write_nil(out),
            Some(inner) => inner.encode(out),
        }
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        if reader.take_nil() {
            Ok(None)
        } else {
            T::decode(reader).map(Some)
        }
    }
}

impl<T: Field> Field for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        value::write_array_len(out, self.len());
        for item in self {
            item.encode(out);
        }
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        let len = array_len(reader)?;
        let mut items = reader.vec(len)?;
        for index in 0..len {
            items.push(T::decode(reader).map_err(|e| e.at(index))?);
        }
        Ok(items)
    }
}

/// A msgpack map, its pairs kept in wire order (NEO/py sends dicts and sets
/// in no defined order, and re-encoding must give back the same bytes).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Map<K, V>(pub Vec<(K, V)>);

impl<K, V> Map<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Map(Vec::new())
    }
}

impl<K, V> FromIterator<(K, V)> for Map<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Map(iter.into_iter().collect())
    }
}

impl<K: Field, V: Field> Field for Map<K, V> {
    fn encode(&self, out: &mut Vec<u8>) {
        value::write_map_len(out, self.0.len());
        for (key, value) in &self.0 {
            key.encode(out);
            value.encode(out);
        }
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        let len = match reader.token()? {
            Token::Map(len) => len,
            other => return Err(FieldError::type_error("map", &other)),
        };
        let mut pairs = reader.vec(len)?;
        for index in 0..len {
            let key = K::decode(reader).map_err(|e| e.at(index))?;
            let value = V::decode(reader).map_err(|e| e.at(index))?;
            pairs.push((key, value));
        }
        Ok(Map(pairs))
    }
}

/// Reads an array header: the number of items that follow.
fn array_len(reader: &mut Reader) -> Result<usize, FieldError> {
    match reader.token()? {
        Token::Array(len) => Ok(len),
        other => Err(FieldError::type_error("array", &other)),
    }
}

/// Reads the header of a fixed-size record, or names the size mismatch.
pub fn record_header(reader: &mut Reader, len: usize) -> Result<(), FieldError> {
    match array_len(reader)? {
        found if found == len => Ok(()),
        found => Err(FieldError::Invalid(format!(
            "expected {len} elements, found {found}"
        ))),
    }
}

macro_rules! tuple_field {
    ($len:literal: $($name:ident $index:tt),*) => {
        impl<$($name: Field),*> Field for ($($name,)*) {
            fn encode(&self, out: &mut Vec<u8>) {
                value::write_array_len(out, $len);
                $(self.$index.encode(out);)*
            }
            fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
                record_header(reader, $len)?;
                Ok(($($name::decode(reader).map_err(|e| e.at($index))?,)*))
            }
        }
    };
}

tuple_field!(2: A 0, B 1);
tuple_field!(3: A 0, B 1, C 2);

/// `[host, port]`, host as bin.
impl Field for Address {
    fn encode(&self, out: &mut Vec<u8>) {
        value::write_array_len(out, 2);
        self.host.encode(out);
        self.port.encode(out);
    }
    fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
        let (host, port) = <(String, u16)>::decode(reader)?;
        Ok(Address { host, port })
    }
}
