//! proptest strategies for every argument type, used by the round-trip test.

use bytes::Bytes;
use proptest::prelude::*;

use crate::field::Map;
use crate::types::{
    Address, CellState, Checksum, ClusterState, ErrorCode, NodeId, NodeState, NodeType, Oid, Tid,
};
use crate::value::Value;

/// A strategy producing any valid value of the type.
pub trait Arb: Sized + std::fmt::Debug {
    fn arb() -> BoxedStrategy<Self>;
}

macro_rules! arb_any {
    ($($ty:ty),*) => {$(
        impl Arb for $ty {
            fn arb() -> BoxedStrategy<Self> {
                any::<$ty>().boxed()
            }
        }
    )*};
}

arb_any!(bool, u8, u16, u32, u64, i32, i64);

impl Arb for f64 {
    fn arb() -> BoxedStrategy<Self> {
        // NaN never equals itself; NEO only sends timestamps.
        proptest::num::f64::NORMAL.boxed()
    }
}

impl Arb for Oid {
    fn arb() -> BoxedStrategy<Self> {
        any::<u64>().prop_map(Oid).boxed()
    }
}

impl Arb for Tid {
    fn arb() -> BoxedStrategy<Self> {
        any::<u64>().prop_map(Tid).boxed()
    }
}

impl Arb for NodeId {
    fn arb() -> BoxedStrategy<Self> {
        any::<i32>().prop_map(NodeId).boxed()
    }
}

impl Arb for Checksum {
    fn arb() -> BoxedStrategy<Self> {
        any::<[u8; 20]>().prop_map(Checksum).boxed()
    }
}

impl Arb for Bytes {
    fn arb() -> BoxedStrategy<Self> {
        // Long enough to cross the bin8 and bin16 size classes.
        prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(Bytes::from)
            .boxed()
    }
}

impl Arb for String {
    fn arb() -> BoxedStrategy<Self> {
        ".{0,40}".boxed()
    }
}

impl Arb for Address {
    fn arb() -> BoxedStrategy<Self> {
        (String::arb(), any::<u16>())
            .prop_map(|(host, port)| Address { host, port })
            .boxed()
    }
}

macro_rules! arb_enum {
    ($($ty:ident),*) => {$(
        impl Arb for $ty {
            fn arb() -> BoxedStrategy<Self> {
                prop::sample::select($ty::ALL).boxed()
            }
        }
    )*};
}

arb_enum!(CellState, ClusterState, ErrorCode, NodeState, NodeType);

impl<T: Arb + 'static> Arb for Option<T> {
    fn arb() -> BoxedStrategy<Self> {
        prop::option::of(T::arb()).boxed()
    }
}

impl<T: Arb + 'static> Arb for Vec<T> {
    fn arb() -> BoxedStrategy<Self> {
        // Up to 20 crosses the fixarray/array16 boundary (16).
        prop::collection::vec(T::arb(), 0..20).boxed()
    }
}

impl<K: Arb + 'static, V: Arb + 'static> Arb for Map<K, V> {
    fn arb() -> BoxedStrategy<Self> {
        prop::collection::vec((K::arb(), V::arb()), 0..20)
            .prop_map(Map)
            .boxed()
    }
}

/// Values as NEO/py can send in free-form places (`extra`, monitoring).
impl Arb for Value {
    fn arb() -> BoxedStrategy<Self> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| Value::Int(i.into())),
            any::<u64>().prop_map(|i| Value::Int(i.into())),
            proptest::num::f64::NORMAL.prop_map(Value::Float),
            Bytes::arb().prop_map(Value::Bin),
            (CellState::arb()).prop_map(|s| Value::Ext(0, Bytes::from(vec![s as u8]))),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
            ]
        })
        .boxed()
    }
}
