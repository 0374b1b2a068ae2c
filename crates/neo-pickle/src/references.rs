//! The oids a ZODB record references, found without Python: exactly what
//! `ZODB.serialize.referencesf` returns, or "cannot tell" (`None`), in which
//! case the caller asks `referencesf` itself.
//!
//! A record is two pickles, the class metadata then the state, read by one
//! unpickler (so the second pickle may fetch what the first memoized).
//! `referencesf` runs zodbpickle's `noload` over each: objects are not built
//! (a class is `None`, a call or `NEWOBJ` gives `None`, `BUILD` drops the
//! state), but tuples, lists and dicts are, and every persistent id is handed
//! to the hook, which records it and stands `None` in its place. It then maps
//! each id to an oid:
//!
//! | persistent id                          | oid                      |
//! |----------------------------------------|--------------------------|
//! | `bytes`                                | itself                   |
//! | `str`                                  | `.encode('ascii')`       |
//! | tuple `(oid, klass)` (any length ≥ 1)  | its first item, as above |
//! | list (`['w', ...]` weak, `['n'/'m', ...]` cross-database, `[oid]` legacy weak) | none |
//!
//! Anything else makes `referencesf` raise (an empty tuple, a first item
//! that is neither `bytes` nor `str`, a non-ASCII `str`, an int...).
//!
//! This module runs the same machine over the opcodes `noload` knows
//! (protocols 0 to 3: zodbpickle's unpickler refuses protocol 4 and later,
//! so does `referencesf`), keeping of each value only what a persistent id
//! can depend on: its kind, its bytes when it is `bytes` or ASCII text, the
//! first item of a tuple, whether it can be a dict key. It answers only when
//! it is sure `referencesf` would succeed with that answer: every error of
//! the real unpickler, and every case where its outcome would depend on what
//! is not tracked (a value's number, an escaped string, a list assigned by
//! index), is `None`. The caller then runs `referencesf`, so a `None` is only
//! slower, never wrong.
//!
//! Limits: the stack, the marks and the memo are bounded (`MAX_*`), memo
//! indices beyond the record's length are refused (a pickler numbers its
//! `PUT`s from 0), so memory stays within a small multiple of the input.
//! Every read is checked against the input's end; nothing here can panic.

/// Values on the stack at once (a tuple of this many items is built on it).
const MAX_STACK: usize = 1 << 20;
/// Marks open at once (nesting depth of tuples, lists, dicts).
const MAX_MARKS: usize = 1 << 16;
/// Digits of a text `LONG` (CPython refuses more than 4300 by default).
const MAX_LONG_DIGITS: usize = 4000;
/// Digits of a text `INT` small enough to fit a C long.
const MAX_INT_DIGITS: usize = 18;
/// Digits of a text memo index.
const MAX_MEMO_DIGITS: usize = 9;

/// Bytes of the record, `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// What a tuple's first item can give `referencesf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Head {
    /// `()`: `reference[0]` raises.
    Empty,
    /// `bytes` or ASCII `str`: the oid.
    Oid(Span),
    /// Anything else: `referencesf` raises.
    Other,
}

/// What the scanner keeps of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    /// `None`: also what `noload` leaves for a class, a call, an object.
    None,
    /// A bool, int or float.
    Scalar,
    Bytes(Span),
    /// A `str` whose characters are all ASCII: its oid is the same bytes.
    Ascii(Span),
    /// A `str` with some non-ASCII character (no oid: `.encode` fails).
    Text,
    List,
    Dict,
    Tuple {
        head: Head,
        hashable: bool,
        /// How a tuple of two items was built, for rewriting.
        pair: Option<Pair>,
    },
}

/// Where a tuple of two items was built: its `TUPLE2` or `TUPLE` opcode,
/// and the `MARK` of the latter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pair {
    opcode: u32,
    mark: Option<u32>,
}

impl Val {
    /// Whether it can be a dict key (a tuple holding a list cannot).
    fn hashable(self) -> bool {
        match self {
            Val::List | Val::Dict => false,
            Val::Tuple { hashable, .. } => hashable,
            _ => true,
        }
    }

    /// What it gives as a tuple's first item.
    fn as_head(self) -> Head {
        match self {
            Val::Bytes(span) | Val::Ascii(span) => Head::Oid(span),
            _ => Head::Other,
        }
    }
}

/// What `referencesf` makes of one persistent id.
enum Reference {
    /// The oid, and the tuple it heads if it is `(oid, class)`.
    Oid(Span, Option<Pair>),
    /// A list: a weak or cross-database reference, left out.
    Skipped,
}

fn reference_of(pid: Val) -> Option<Reference> {
    match pid {
        Val::Bytes(span) | Val::Ascii(span) => Some(Reference::Oid(span, None)),
        Val::Tuple {
            head: Head::Oid(span),
            pair,
            ..
        } => Some(Reference::Oid(span, pair)),
        Val::List => Some(Reference::Skipped),
        // An empty tuple, a tuple of anything else, non-ASCII text, a
        // number, None, a dict: referencesf raises.
        _ => None,
    }
}

/// The oids `ZODB.serialize.referencesf(record)` returns, in its order
/// (duplicates included), or `None` if this cannot tell.
pub fn references(record: &[u8]) -> Option<Vec<&[u8]>> {
    // Spans are u32: larger records are left to Python.
    u32::try_from(record.len()).ok()?;
    let refs = Machine::scan(record, false)?;
    refs.into_iter()
        .map(|(span, _)| record.get(span.start as usize..span.end as usize))
        .collect()
}

/// One unpickler over a record, as `noload` runs it.
struct Machine<'a> {
    data: &'a [u8],
    /// Next byte to read.
    pos: usize,
    stack: Vec<Val>,
    /// Stack lengths at each open `MARK` (never above the stack's length:
    /// a pickle that pops below a mark is left to Python).
    marks: Vec<usize>,
    /// Where each open `MARK` is in the record.
    mark_positions: Vec<u32>,
    /// Memoized values by index; kept from one pickle to the next.
    memo: Vec<Option<Val>>,
    /// The oids found so far, in order, with the `(oid, class)` tuple
    /// they head, if any.
    refs: Vec<(Span, Option<Pair>)>,
    /// Rewriting: Python 2 `str` oids are raw bytes, whatever they hold
    /// (`referencesf` would refuse the non-ASCII ones).
    raw_strings: bool,
}

// Opcodes (pickletools' names).
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const FLOAT: u8 = b'F';
const INT: u8 = b'I';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const LONG: u8 = b'L';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const PERSID: u8 = b'P';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const STRING: u8 = b'S';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const UNICODE: u8 = b'V';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const GET: u8 = b'g';
const BINGET: u8 = b'h';
const INST: u8 = b'i';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const OBJ: u8 = b'o';
const PUT: u8 = b'p';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
const PROTO: u8 = 0x80;
const NEWOBJ: u8 = 0x81;
const EXT1: u8 = 0x82;
const EXT2: u8 = 0x83;
const EXT4: u8 = 0x84;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';

/// The highest protocol zodbpickle's unpickler accepts.
const HIGHEST_PROTOCOL: u8 = 3;

impl<'a> Machine<'a> {
    /// The references of a record: its two pickles, one memo for both.
    fn scan(record: &'a [u8], raw_strings: bool) -> Option<Vec<(Span, Option<Pair>)>> {
        // Spans are u32: larger records are left to Python.
        u32::try_from(record.len()).ok()?;
        let mut machine = Machine {
            data: record,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            mark_positions: Vec::new(),
            memo: Vec::new(),
            refs: Vec::new(),
            raw_strings,
        };
        machine.run()?;
        machine.run()?;
        Some(machine.refs)
    }

    /// Runs one pickle to its `STOP`, as `noload` does: a fresh stack and
    /// marks, the memo kept.
    fn run(&mut self) -> Option<()> {
        self.stack.clear();
        self.marks.clear();
        self.mark_positions.clear();
        loop {
            let opcode = self.byte()?;
            if opcode == STOP {
                // noload returns the top of the stack: an error if empty.
                self.pop()?;
                return Some(());
            }
            self.step(opcode)?;
            // Popping below an open mark is legal for this unpickler but
            // never written by a pickler; its effects are not modelled.
            if self
                .marks
                .last()
                .is_some_and(|&mark| mark > self.stack.len())
            {
                return None;
            }
        }
    }

    fn step(&mut self, opcode: u8) -> Option<()> {
        match opcode {
            PROTO => (self.byte()? <= HIGHEST_PROTOCOL).then_some(()),
            MARK => {
                if self.marks.len() >= MAX_MARKS {
                    return None;
                }
                self.marks.push(self.stack.len());
                self.mark_positions.push(self.opcode_position()?);
                Some(())
            }
            POP => {
                // The top mark goes first if nothing was pushed after it.
                if self.marks.last() == Some(&self.stack.len()) {
                    self.marker()?;
                } else {
                    self.pop()?;
                }
                Some(())
            }
            POP_MARK => {
                let mark = self.marker()?;
                self.stack.truncate(mark);
                Some(())
            }
            DUP => {
                let top = *self.stack.last()?;
                self.push(top)
            }
            NONE => self.push(Val::None),
            NEWTRUE | NEWFALSE => self.push(Val::Scalar),
            BININT => self.skip_then_scalar(4),
            BININT1 => self.skip_then_scalar(1),
            BININT2 => self.skip_then_scalar(2),
            BINFLOAT => self.skip_then_scalar(8),
            LONG1 => {
                let len = self.byte()?;
                self.skip_then_scalar(usize::from(len))
            }
            LONG4 => {
                let len = usize::try_from(self.i32_le()?).ok()?;
                self.skip_then_scalar(len)
            }
            INT => {
                // Protocols 0 and 1 write False and True as "00" and "01".
                let line = self.line()?;
                if line != b"00" && line != b"01" {
                    decimal(line, MAX_INT_DIGITS)?;
                }
                self.push(Val::Scalar)
            }
            LONG => {
                let line = self.line()?;
                let digits = line.strip_suffix(b"L").unwrap_or(line);
                decimal(digits, MAX_LONG_DIGITS)?;
                self.push(Val::Scalar)
            }
            // A text float's syntax is C's strtod: left to Python.
            FLOAT => None,
            BINBYTES => {
                let len = self.u32_le()?;
                let span = self.take(len)?;
                self.push(Val::Bytes(span))
            }
            SHORT_BINBYTES => {
                let len = self.byte()?;
                let span = self.take(usize::from(len))?;
                self.push(Val::Bytes(span))
            }
            BINSTRING => {
                let len = usize::try_from(self.i32_le()?).ok()?;
                self.old_string(len)
            }
            SHORT_BINSTRING => {
                let len = self.byte()?;
                self.old_string(usize::from(len))
            }
            STRING => self.quoted_string(),
            BINUNICODE => {
                let len = self.u32_le()?;
                let span = self.take(len)?;
                let text = self.text_of(span)?;
                self.push(text)
            }
            UNICODE => {
                // raw-unicode-escape: only backslashes are special (left to
                // Python); any other byte is the character of that number.
                let span = self.line_span()?;
                let bytes = self.slice(span)?;
                if bytes.contains(&b'\\') {
                    return None;
                }
                self.push(if bytes.is_ascii() {
                    Val::Ascii(span)
                } else {
                    Val::Text
                })
            }
            EMPTY_TUPLE => self.push(Val::Tuple {
                head: Head::Empty,
                hashable: true,
                pair: None,
            }),
            TUPLE1 => self.counted_tuple(1),
            TUPLE2 => self.counted_tuple(2),
            TUPLE3 => self.counted_tuple(3),
            TUPLE => {
                let mark_position = self.mark_positions.last().copied();
                let mark = self.marker()?;
                let opcode = self.opcode_position()?;
                let mut tuple = tuple_of(self.stack.get(mark..)?);
                if let Val::Tuple { pair, .. } = &mut tuple {
                    if self.stack.len() - mark == 2 {
                        *pair = Some(Pair {
                            opcode,
                            mark: mark_position,
                        });
                    }
                }
                self.stack.truncate(mark);
                self.push(tuple)
            }
            EMPTY_LIST => self.push(Val::List),
            LIST => {
                let mark = self.marker()?;
                self.stack.truncate(mark);
                self.push(Val::List)
            }
            EMPTY_DICT => self.push(Val::Dict),
            DICT => {
                let mark = self.marker()?;
                // Keys at even offsets from the mark; an odd last item is
                // dropped, as the unpickler does.
                let items = self.stack.get(mark..)?;
                if !items
                    .chunks_exact(2)
                    .all(|pair| pair.first().is_some_and(|key| key.hashable()))
                {
                    return None;
                }
                self.stack.truncate(mark);
                self.push(Val::Dict)
            }
            APPEND => {
                let target = self.stack.len().checked_sub(1)?;
                self.append_from(target)
            }
            APPENDS => {
                let mark = self.marker()?;
                self.append_from(mark)
            }
            SETITEM => {
                let target = self.stack.len().checked_sub(2)?;
                self.set_items_from(target)
            }
            SETITEMS => {
                let mark = self.marker()?;
                self.set_items_from(mark)
            }
            GLOBAL => {
                // noload does not look the class up.
                self.line()?;
                self.line()?;
                self.push(Val::None)
            }
            REDUCE => {
                let keep = self.stack.len().checked_sub(2)?;
                self.stack.truncate(keep);
                self.push(Val::None)
            }
            NEWOBJ => {
                self.pop()?;
                self.pop()?;
                self.push(Val::None)
            }
            BUILD => {
                self.pop()?;
                Some(())
            }
            OBJ => {
                // noload keeps the class (the item after the mark), pushes
                // nothing.
                let mark = self.marker()?;
                let keep = mark.checked_add(1)?;
                self.stack.truncate(keep);
                Some(())
            }
            INST => {
                let mark = self.marker()?;
                self.stack.truncate(mark);
                self.line()?;
                self.line()?;
                self.push(Val::None)
            }
            EXT1 => self.skip_then_none(1),
            EXT2 => self.skip_then_none(2),
            EXT4 => self.skip_then_none(4),
            PERSID => {
                // The id is the line's bytes, not decoded.
                let span = self.line_span()?;
                if span.start == span.end {
                    return None;
                }
                self.persistent(Val::Bytes(span))
            }
            BINPERSID => {
                let pid = self.pop()?;
                self.persistent(pid)
            }
            BINPUT => {
                let index = self.byte()?;
                self.memo_put(usize::from(index))
            }
            LONG_BINPUT => {
                let index = self.u32_le()?;
                self.memo_put(index)
            }
            PUT => {
                let index = self.memo_index_line()?;
                self.memo_put(index)
            }
            BINGET => {
                let index = self.byte()?;
                self.memo_get(usize::from(index))
            }
            LONG_BINGET => {
                let index = self.u32_le()?;
                self.memo_get(index)
            }
            GET => {
                let index = self.memo_index_line()?;
                self.memo_get(index)
            }
            // Protocol 4 and 5 opcodes, and anything else: the unpickler
            // refuses them ("invalid load key").
            _ => None,
        }
    }

    fn push(&mut self, value: Val) -> Option<()> {
        if self.stack.len() >= MAX_STACK {
            return None;
        }
        self.stack.push(value);
        Some(())
    }

    fn pop(&mut self) -> Option<Val> {
        self.stack.pop()
    }

    /// Closes the top mark: the stack length when it was opened.
    fn marker(&mut self) -> Option<usize> {
        self.mark_positions.pop();
        self.marks.pop()
    }

    /// Where the opcode being run is: the byte before the cursor of a
    /// one-byte opcode.
    fn opcode_position(&self) -> Option<u32> {
        u32::try_from(self.pos.checked_sub(1)?).ok()
    }

    fn persistent(&mut self, pid: Val) -> Option<()> {
        match reference_of(pid)? {
            Reference::Oid(span, pair) => self.refs.push((span, pair)),
            Reference::Skipped => {}
        }
        // The hook (list.append) returns None, which takes the id's place.
        self.push(Val::None)
    }

    fn counted_tuple(&mut self, len: usize) -> Option<()> {
        let start = self.stack.len().checked_sub(len)?;
        let mut tuple = tuple_of(self.stack.get(start..)?);
        if let Val::Tuple { pair, .. } = &mut tuple {
            if len == 2 {
                *pair = Some(Pair {
                    opcode: self.opcode_position()?,
                    mark: None,
                });
            }
        }
        self.stack.truncate(start);
        self.push(tuple)
    }

    /// `APPEND`/`APPENDS` with the items above `target`: appended to a
    /// list, dropped for None (noload's objects), an error on anything else.
    fn append_from(&mut self, target: usize) -> Option<()> {
        let len = self.stack.len();
        if target == 0 || target > len {
            return None;
        }
        if target == len {
            return Some(()); // nothing to append: no check at all
        }
        match self.stack.get(target - 1)? {
            Val::None | Val::List => {
                self.stack.truncate(target);
                Some(())
            }
            _ => None,
        }
    }

    /// `SETITEM`/`SETITEMS` with the pairs above `target`: set in a dict
    /// (keys must be hashable), dropped for None, an error on anything else
    /// (a list's item assignment depends on the index's value: left to
    /// Python).
    fn set_items_from(&mut self, target: usize) -> Option<()> {
        let len = self.stack.len();
        if target == 0 || target > len {
            return None;
        }
        match self.stack.get(target - 1)? {
            Val::None => {}
            _ if target == len => return Some(()),
            Val::Dict => {
                let items = self.stack.get(target..)?;
                if items.len() % 2 != 0
                    || !items
                        .chunks_exact(2)
                        .all(|pair| pair.first().is_some_and(|key| key.hashable()))
                {
                    return None;
                }
            }
            _ => return None,
        }
        self.stack.truncate(target);
        Some(())
    }

    fn memo_put(&mut self, index: usize) -> Option<()> {
        let value = *self.stack.last()?;
        // A pickler numbers its PUTs from 0: an index beyond the record's
        // length is not one of ours, and would make the memo large.
        if index >= self.data.len() {
            return None;
        }
        if index >= self.memo.len() {
            self.memo.resize(index + 1, None);
        }
        *self.memo.get_mut(index)? = Some(value);
        Some(())
    }

    fn memo_get(&mut self, index: usize) -> Option<()> {
        let value = (*self.memo.get(index)?)?;
        self.push(value)
    }

    /// A text memo index: plain decimal digits only (Python's parser
    /// accepts more: left to it).
    fn memo_index_line(&mut self) -> Option<usize> {
        let line = self.line()?;
        if line.is_empty() || line.len() > MAX_MEMO_DIGITS || !line.iter().all(u8::is_ascii_digit) {
            return None;
        }
        line.iter().try_fold(0usize, |value, digit| {
            value
                .checked_mul(10)?
                .checked_add(usize::from(digit - b'0'))
        })
    }

    /// A Python 2 `str` (`BINSTRING`): decoded as ASCII (strictly, as
    /// `referencesf`'s unpickler is configured), an error otherwise.
    fn old_string(&mut self, len: usize) -> Option<()> {
        let span = self.take(len)?;
        if self.raw_strings {
            return self.push(Val::Bytes(span));
        }
        if !self.slice(span)?.is_ascii() {
            return None;
        }
        self.push(Val::Ascii(span))
    }

    /// `STRING`: a quoted line. Escapes, NULs and non-ASCII bytes (which
    /// the unpickler's C code treats in ways of its own) are left to Python.
    fn quoted_string(&mut self) -> Option<()> {
        let line = self.line_span()?;
        let bytes = self.slice(line)?;
        if bytes.iter().any(|&b| b == b'\\' || b == 0 || !b.is_ascii()) {
            return None;
        }
        // Trailing blanks and control characters are stripped first.
        let trimmed = bytes.iter().rposition(|&b| b > b' ').map_or(0, |i| i + 1);
        let quoted = bytes.get(..trimmed)?;
        let (&first, &last) = (quoted.first()?, quoted.last()?);
        if quoted.len() < 2 || first != last || (first != b'"' && first != b'\'') {
            return None;
        }
        let span = Span {
            start: line.start + 1,
            end: line.start + u32::try_from(trimmed).ok()? - 1,
        };
        self.push(Val::Ascii(span))
    }

    /// A `BINUNICODE`'s value: UTF-8 (the unpickler also accepts encoded
    /// surrogates, which Rust does not: left to Python).
    fn text_of(&self, span: Span) -> Option<Val> {
        let bytes = self.slice(span)?;
        if bytes.is_ascii() {
            return Some(Val::Ascii(span));
        }
        std::str::from_utf8(bytes).ok()?;
        Some(Val::Text)
    }

    fn skip_then_scalar(&mut self, len: usize) -> Option<()> {
        self.take(len)?;
        self.push(Val::Scalar)
    }

    fn skip_then_none(&mut self, len: usize) -> Option<()> {
        self.take(len)?;
        self.push(Val::None)
    }

    fn byte(&mut self) -> Option<u8> {
        let byte = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(byte)
    }

    /// The next `len` bytes, or `None` if the record ends before.
    fn take(&mut self, len: usize) -> Option<Span> {
        let end = self.pos.checked_add(len)?;
        if end > self.data.len() {
            return None;
        }
        let span = Span {
            start: u32::try_from(self.pos).ok()?,
            end: u32::try_from(end).ok()?,
        };
        self.pos = end;
        Some(span)
    }

    fn u32_le(&mut self) -> Option<usize> {
        let span = self.take(4)?;
        let bytes: [u8; 4] = self.slice(span)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    }

    fn i32_le(&mut self) -> Option<i32> {
        let span = self.take(4)?;
        let bytes: [u8; 4] = self.slice(span)?.try_into().ok()?;
        Some(i32::from_le_bytes(bytes))
    }

    /// The bytes up to the next newline (excluded), which is consumed. A
    /// record ending without one is left to Python.
    fn line_span(&mut self) -> Option<Span> {
        let rest = self.data.get(self.pos..)?;
        let len = rest.iter().position(|&b| b == b'\n')?;
        let span = self.take(len)?;
        self.pos += 1;
        Some(span)
    }

    fn line(&mut self) -> Option<&'a [u8]> {
        let span = self.line_span()?;
        self.slice(span)
    }

    fn slice(&self, span: Span) -> Option<&'a [u8]> {
        self.data.get(span.start as usize..span.end as usize)
    }
}

/// What becomes of one referenced oid when a record is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewReference {
    /// The same oid.
    Keep,
    /// Another oid; an `(oid, class)` reference keeps its class.
    Oid(u64),
    /// Another oid, of an object whose class the reference can not know
    /// (a mount point's target): an `(oid, class)` reference becomes a
    /// plain oid, and ZODB reads the class from the object's record.
    OidWithoutClass(u64),
}

/// `record` with the oid of each persistent reference replaced as `map`
/// says, or `None` when the record can not be scanned or a reference to
/// change is not an 8-byte binary string. Only the oids' bytes change, and
/// for a dropped class, the tuple's opcodes: `TUPLE2` becomes `POP` (of the
/// class), `MARK … TUPLE` loses its `MARK` and ends with `POP`; the memo
/// and everything else are untouched.
pub fn rewrite_references(record: &[u8], map: impl Fn(u64) -> NewReference) -> Option<Vec<u8>> {
    enum Edit {
        Oid([u8; 8]),
        Byte(u8),
        Delete,
    }
    let mut edits = std::collections::BTreeMap::new();
    for (span, pair) in Machine::scan(record, true)? {
        let (start, end) = (span.start as usize, span.end as usize);
        let oid = u64::from_be_bytes(record.get(start..end)?.try_into().ok()?);
        let (new, drop_class) = match map(oid) {
            NewReference::Keep => continue,
            NewReference::Oid(new) => (new, false),
            NewReference::OidWithoutClass(new) => (new, true),
        };
        if !is_binary_string(record, start) {
            return None;
        }
        edits.insert(start, Edit::Oid(new.to_be_bytes()));
        if let Some(pair) = pair.filter(|_| drop_class) {
            edits.insert(pair.opcode as usize, Edit::Byte(POP));
            if let Some(mark) = pair.mark {
                edits.insert(mark as usize, Edit::Delete);
            }
        }
    }
    let mut rewritten = Vec::with_capacity(record.len());
    let mut copied = 0;
    for (at, edit) in edits {
        rewritten.extend_from_slice(record.get(copied..at)?);
        copied = match edit {
            Edit::Oid(oid) => {
                rewritten.extend_from_slice(&oid);
                at + 8
            }
            Edit::Byte(byte) => {
                rewritten.push(byte);
                at + 1
            }
            Edit::Delete => at + 1,
        };
    }
    rewritten.extend_from_slice(record.get(copied..)?);
    Some(rewritten)
}

/// Whether the 8 bytes at `start` are the whole value of a binary string
/// opcode (`SHORT_BINBYTES`, `SHORT_BINSTRING`, `BINBYTES`, `BINSTRING`),
/// so that other 8 bytes can take their place.
fn is_binary_string(record: &[u8], start: usize) -> bool {
    let short = start
        .checked_sub(2)
        .and_then(|at| record.get(at..start))
        .is_some_and(|head| matches!(head, [SHORT_BINBYTES | SHORT_BINSTRING, 8]));
    let long = start
        .checked_sub(5)
        .and_then(|at| record.get(at..start))
        .is_some_and(|head| matches!(head, [BINBYTES | BINSTRING, 8, 0, 0, 0]));
    short || long
}

/// A tuple of these items.
fn tuple_of(items: &[Val]) -> Val {
    Val::Tuple {
        head: items.first().map_or(Head::Empty, |first| first.as_head()),
        hashable: items.iter().all(|item| item.hashable()),
        pair: None,
    }
}

/// Checks a text integer is plain decimal, `[+-]?(0|[1-9][0-9]*)`, of at
/// most `max_digits` digits: surely accepted by the unpickler (which also
/// accepts other forms, left to Python).
fn decimal(text: &[u8], max_digits: usize) -> Option<()> {
    let digits = match text.first()? {
        b'+' | b'-' => text.get(1..)?,
        _ => text,
    };
    let plain = !digits.is_empty()
        && digits.len() <= max_digits
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits.first() != Some(&b'0'));
    plain.then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID1: &[u8] = b"\0\0\0\0\0\0\0\x01";
    const OID2: &[u8] = b"\0\0\0\0\0\0\0\x02";
    /// An oid whose bytes are not all ASCII.
    const OID_HIGH: &[u8] = b"\0\0\0\0\0\0\0\x81";

    /// Protocol 3 class metadata as ZODB writes it: a GLOBAL, memoized.
    const CLASS3: &[u8] = b"\x80\x03cpersistent.mapping\nPersistentMapping\nq\x00.";
    /// The same in protocol 1.
    const CLASS1: &[u8] = b"cpersistent.mapping\nPersistentMapping\nq\x00.";

    fn short_bytes(oid: &[u8]) -> Vec<u8> {
        let mut out = vec![SHORT_BINBYTES, oid.len() as u8];
        out.extend_from_slice(oid);
        out
    }

    fn short_string(oid: &[u8]) -> Vec<u8> {
        let mut out = vec![SHORT_BINSTRING, oid.len() as u8];
        out.extend_from_slice(oid);
        out
    }

    fn unicode(text: &[u8]) -> Vec<u8> {
        let mut out = vec![BINUNICODE];
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text);
        out
    }

    /// `(oid, <class>)` as ZODB's persistent_id makes it, then BINPERSID.
    fn pid_with_class(oid: Vec<u8>) -> Vec<u8> {
        let mut out = oid;
        out.extend_from_slice(b"cBTrees.OOBTree\nOOBucket\n\x86Q");
        out
    }

    fn record(class: &[u8], state: &[u8]) -> Vec<u8> {
        let mut out = class.to_vec();
        out.extend_from_slice(state);
        out
    }

    /// A protocol 3 state: `{'data': {'a': <pid>}}`.
    fn mapping_state(pid: &[u8]) -> Vec<u8> {
        let mut out = b"\x80\x03}q\x01".to_vec();
        out.extend(unicode(b"data"));
        out.extend_from_slice(b"}q\x02");
        out.extend(unicode(b"a"));
        out.extend_from_slice(pid);
        out.extend_from_slice(b"ss.");
        out
    }

    fn refs(record: &[u8]) -> Option<Vec<Vec<u8>>> {
        references(record).map(|oids| oids.into_iter().map(<[u8]>::to_vec).collect())
    }

    #[test]
    fn a_state_without_persistent_ids_has_no_references() {
        let state = b"\x80\x03}q\x01(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00b]q\x02(K\x01K\x02eu.";
        assert_eq!(refs(&record(CLASS3, state)), Some(vec![]));
    }

    #[test]
    fn an_oid_with_its_class_is_its_oid() {
        let state = mapping_state(&pid_with_class(short_bytes(OID1)));
        assert_eq!(refs(&record(CLASS3, &state)), Some(vec![OID1.to_vec()]));
    }

    #[test]
    fn a_plain_oid_is_itself() {
        let mut pid = short_bytes(OID2);
        pid.push(BINPERSID);
        let state = mapping_state(&pid);
        assert_eq!(refs(&record(CLASS3, &state)), Some(vec![OID2.to_vec()]));
    }

    #[test]
    fn an_ascii_str_is_its_bytes_and_any_other_text_is_left_to_python() {
        let mut pid = unicode(b"abcdefgh");
        pid.push(BINPERSID);
        let state = mapping_state(&pid);
        assert_eq!(
            refs(&record(CLASS3, &state)),
            Some(vec![b"abcdefgh".to_vec()])
        );
        let mut pid = unicode("é".as_bytes());
        pid.push(BINPERSID);
        assert_eq!(refs(&record(CLASS3, &mapping_state(&pid))), None);
        // Invalid UTF-8 (the unpickler raises) and encoded surrogates (it
        // accepts them): neither is answered.
        for text in [&b"\xff"[..], b"\xed\xa0\x80"] {
            let mut state = b"\x80\x03".to_vec();
            state.extend(unicode(text));
            state.push(STOP);
            assert_eq!(refs(&record(CLASS3, &state)), None);
        }
    }

    #[test]
    fn weak_and_cross_database_references_are_left_out() {
        // ['w', (oid,)], ['w', (oid, 'db')], ['m', ('db', oid, klass)],
        // ['n', ('db', oid)] and the legacy weak [oid].
        let mut lists = Vec::new();
        let mut weak = b"](".to_vec();
        weak.extend(unicode(b"w"));
        weak.extend(short_bytes(OID1));
        weak.extend_from_slice(b"\x85e");
        lists.push(weak);
        let mut weak_db = b"](".to_vec();
        weak_db.extend(unicode(b"w"));
        weak_db.extend(short_bytes(OID1));
        weak_db.extend(unicode(b"other"));
        weak_db.extend_from_slice(b"\x86e");
        lists.push(weak_db);
        let mut multi = b"](".to_vec();
        multi.extend(unicode(b"m"));
        multi.extend(unicode(b"other"));
        multi.extend(short_bytes(OID1));
        multi.extend_from_slice(b"cfoo\nBar\n\x87e");
        lists.push(multi);
        let mut multi_oid = b"](".to_vec();
        multi_oid.extend(unicode(b"n"));
        multi_oid.extend(unicode(b"other"));
        multi_oid.extend(short_bytes(OID1));
        multi_oid.extend_from_slice(b"\x86e");
        lists.push(multi_oid);
        let mut legacy = b"]".to_vec();
        legacy.extend(short_bytes(OID1));
        legacy.push(APPEND);
        lists.push(legacy);
        for mut pid in lists {
            pid.push(BINPERSID);
            let state = mapping_state(&pid);
            assert_eq!(refs(&record(CLASS3, &state)), Some(vec![]), "{state:?}");
        }
    }

    #[test]
    fn memoized_ids_and_their_parts_count_each_time_they_are_used() {
        // The pid tuple is memoized (BINPUT 10) and used again (BINGET);
        // the oid bytes are memoized (BINPUT 11) and used in a plain pid.
        let mut state = b"\x80\x03]q\x01(".to_vec();
        state.extend(short_bytes(OID1));
        state.extend_from_slice(b"q\x0bcfoo\nBar\n\x86q\x0aQh\x0aQh\x0bQ");
        state.extend(short_bytes(OID2));
        state.extend_from_slice(b"r\x20\x00\x00\x00Qj\x20\x00\x00\x00Qe.");
        let oids = [OID1, OID1, OID1, OID2, OID2].map(<[u8]>::to_vec);
        assert_eq!(refs(&record(CLASS3, &state)), Some(oids.to_vec()));
    }

    #[test]
    fn the_memo_is_shared_by_the_two_pickles() {
        // The class pickle memoizes an oid; the state's pid fetches it.
        let mut class = b"\x80\x03".to_vec();
        class.extend(short_bytes(OID2));
        class.extend_from_slice(b"q\x05.");
        let state = b"\x80\x03h\x05Q.";
        assert_eq!(refs(&record(&class, state)), Some(vec![OID2.to_vec()]));
        // ... but not the stack: the state starts empty.
        assert_eq!(refs(&record(&class, b"\x80\x03Q.")), None);
    }

    #[test]
    fn a_persistent_class_is_a_reference_of_the_metadata() {
        // Metadata `((oid, None), None)`: the class itself is persistent.
        let mut class = b"\x80\x03".to_vec();
        class.extend(short_bytes(OID1));
        class.extend_from_slice(b"N\x86QN\x86q\x00.");
        let state = b"\x80\x03}q\x01.";
        assert_eq!(refs(&record(&class, state)), Some(vec![OID1.to_vec()]));
    }

    #[test]
    fn protocol_1_strings_are_decoded_as_ascii() {
        // (oid, class) with the oid a Python 2 str.
        let mut state = b"(".to_vec();
        state.extend(short_string(OID1));
        state.extend_from_slice(b"cfoo\nBar\ntQ.");
        assert_eq!(refs(&record(CLASS1, &state)), Some(vec![OID1.to_vec()]));
        // The same with a BINSTRING and a text PERSID.
        let mut state = b"(".to_vec();
        state.push(BINSTRING);
        state.extend_from_slice(&8u32.to_le_bytes());
        state.extend_from_slice(OID2);
        state.extend_from_slice(b"NtQPabc\n0.");
        assert_eq!(
            refs(&record(CLASS1, &state)),
            Some(vec![OID2.to_vec(), b"abc".to_vec()])
        );
        // A non-ASCII str fails to decode: referencesf raises.
        let mut state = short_string(OID_HIGH);
        state.extend_from_slice(b"Q.");
        assert_eq!(refs(&record(CLASS1, &state)), None);
        // Quoted text strings, plain ones only.
        assert_eq!(
            refs(&record(CLASS1, b"S'abc'\nQ.")),
            Some(vec![b"abc".to_vec()])
        );
        assert_eq!(refs(&record(CLASS1, b"S'a\\x00'\nQ.")), None);
        assert_eq!(refs(&record(CLASS1, b"S'abc\nQ.")), None);
    }

    #[test]
    fn text_numbers_are_plain_decimal_or_left_to_python() {
        let ok = record(
            CLASS1,
            b"(I12\nI-3\nL123456789012345678901234567890L\nI01\ntN.",
        );
        assert_eq!(refs(&ok), Some(vec![])); // I01: True
        assert_eq!(refs(&record(CLASS1, b"I010\n.")), None); // octal
        assert_eq!(refs(&record(CLASS1, b"I08\n.")), None); // invalid
        assert_eq!(refs(&record(CLASS1, b"F1.5\n.")), None);
        assert_eq!(refs(&record(CLASS1, b"I0x10\n.")), None);
    }

    #[test]
    fn ids_referencesf_cannot_use_are_left_to_python() {
        for pid in [
            &b")Q"[..],                         // empty tuple
            b"K\x01Q",                          // int
            b"NQ",                              // None
            b"}Q",                              // dict
            b"K\x01N\x86Q",                     // (1, None)
            b"]N\x86Q",                         // ([], None)
            b"X\x02\x00\x00\x00\xc3\xa9N\x86Q", // ('é', None)
        ] {
            assert_eq!(refs(&record(CLASS3, &mapping_state(pid))), None, "{pid:?}");
        }
    }

    #[test]
    fn protocols_above_3_and_their_opcodes_are_refused() {
        let state = b"\x80\x03N.";
        assert_eq!(refs(&record(b"\x80\x04N.", state)), None);
        assert_eq!(refs(&record(b"\x80\x05N.", state)), None);
        // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, EMPTY_SET.
        for opcode in [0x95u8, 0x8c, 0x94, 0x93, 0x8f] {
            let class = [PROTO, 3, NONE, opcode, STOP];
            assert_eq!(refs(&record(&class, state)), None);
        }
    }

    #[test]
    fn what_the_unpickler_refuses_is_none() {
        let state = b"\x80\x03N.";
        for class in [
            &b""[..],
            b".",                             // STOP on an empty stack
            b"\x80\x03",                      // no STOP
            b"\x80\x03h\x00.",                // memo entry never set
            b"\x80\x03)a.",                   // APPEND to a tuple
            b"\x80\x03](]NNu.",               // SETITEMS on a list
            b"\x80\x03}(]Nu.",                // a list as a dict key
            b"\x80\x03(]Nd.",                 // the same through DICT
            b"\x80\x03}(NNNu.",               // odd SETITEMS
            b"\x80\x03Nr\x00\x00\x00\x10.",   // memo index beyond the record
            b"\x80\x03C\x09abc.",             // bytes beyond the record
            b"\x80\x03T\xff\xff\xff\xffabc.", // negative length
            b"cfoo\nBar",                     // a line without its newline
        ] {
            assert_eq!(refs(&record(class, state)), None, "{class:?}");
        }
    }

    #[test]
    fn popping_below_a_mark_is_left_to_python() {
        // Accepted by zodbpickle's unpickler (marks are mere stack
        // lengths there), never written by a pickler.
        let state = b"\x80\x03N.";
        assert_eq!(refs(&record(b"NN(\x86N.", state)), None);
        // Popping below and pushing back to the mark is followed.
        assert_eq!(refs(&record(b"N(\x85.", state)), Some(vec![]));
    }

    #[test]
    fn what_the_unpickler_accepts_oddly_is_followed() {
        let state = b"\x80\x03N.";
        for class in [
            &b"(0N."[..],                             // POP takes back an empty mark
            b"(N1N.",                                 // POP_MARK
            b"(NNdN.",                                // DICT drops an odd last item
            b"N(NNeN.",                               // APPENDS on None (noload's objects)
            b"N(NNuN.",                               // SETITEMS on None
            b")(u.",                                  // SETITEMS of nothing, on anything
            b"(cfoo\nBar\nNNo.",                      // OBJ keeps the class
            b"Nq\x01\x82\x05N.",                      // EXT1: None
            b"\x80\x03Nq\x00.\x80\x03h\x00.trailing", // extra bytes ignored
        ] {
            assert_eq!(refs(&record(class, state)), Some(vec![]), "{class:?}");
        }
    }

    #[test]
    fn every_truncation_is_none() {
        let state = mapping_state(&pid_with_class(short_bytes(OID1)));
        let full = record(CLASS3, &state);
        for len in 0..full.len() {
            assert_eq!(refs(full.get(..len).unwrap_or_default()), None, "{len}");
        }
        assert_eq!(refs(&full), Some(vec![OID1.to_vec()]));
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift: no dependency, same bytes each run.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let base = record(CLASS3, &mapping_state(&pid_with_class(short_bytes(OID1))));
        for round in 0..20_000 {
            let mut data = if round % 2 == 0 {
                base.clone()
            } else {
                (0..next() % 64).map(|_| next() as u8).collect()
            };
            for _ in 0..1 + next() % 4 {
                if data.is_empty() {
                    break;
                }
                let at = (next() % data.len() as u64) as usize;
                if let Some(byte) = data.get_mut(at) {
                    *byte = next() as u8;
                }
            }
            let _ = references(&data);
            let _ = rewrite_references(&data, |oid| NewReference::OidWithoutClass(!oid));
        }
    }

    fn shift(by: u64) -> impl Fn(u64) -> NewReference {
        move |oid| NewReference::Oid(oid + by)
    }

    #[test]
    fn oids_are_rewritten_in_place_and_classes_kept() {
        let state = mapping_state(&pid_with_class(short_bytes(OID1)));
        let original = record(CLASS3, &state);
        let rewritten = rewrite_references(&original, shift(0x100)).unwrap();
        assert_eq!(rewritten.len(), original.len());
        assert_eq!(
            refs(&rewritten).unwrap(),
            vec![b"\0\0\0\0\0\0\x01\x01".to_vec()]
        );
        // Nothing but the oid changed.
        let changed: Vec<usize> = (0..original.len())
            .filter(|&i| original[i] != rewritten[i])
            .collect();
        assert_eq!(changed.len(), 1);
        assert!(rewrite_references(&original, |_| NewReference::Keep).unwrap() == original);
    }

    #[test]
    fn a_dropped_class_leaves_a_plain_oid_in_both_tuple_forms() {
        // Protocol 3: (oid, class) built by TUPLE2.
        let state = mapping_state(&pid_with_class(short_bytes(OID1)));
        let original = record(CLASS3, &state);
        let rewritten =
            rewrite_references(&original, |_| NewReference::OidWithoutClass(7)).unwrap();
        let oid7 = 7u64.to_be_bytes().to_vec();
        assert_eq!(refs(&rewritten).unwrap(), vec![oid7.clone()]);
        let machine = Machine::scan(&rewritten, true).unwrap();
        assert_eq!(machine.len(), 1);
        assert_eq!(machine[0].1, None, "the reference is a plain oid now");
        // Protocol 1: MARK oid class TUPLE, with a Python 2 str oid that is
        // not ASCII.
        let mut pid = vec![MARK];
        pid.extend(short_string(OID_HIGH));
        pid.extend_from_slice(b"cBTrees.OOBTree\nOOBucket\nq\x05tQ");
        let mut state = b"}q\x01U\x01aq\x02".to_vec();
        state.extend(pid);
        state.extend_from_slice(b"s.");
        let original = record(CLASS1, &state);
        let rewritten =
            rewrite_references(&original, |_| NewReference::OidWithoutClass(7)).unwrap();
        assert_eq!(rewritten.len(), original.len() - 1);
        let machine = Machine::scan(&rewritten, true).unwrap();
        assert_eq!(machine.len(), 1);
        assert_eq!(machine[0].1, None);
        let span = machine[0].0;
        assert_eq!(
            &rewritten[span.start as usize..span.end as usize],
            &oid7[..]
        );
    }

    #[test]
    fn a_memoized_reference_is_rewritten_once() {
        // The same (oid, class) tuple memoized, then fetched again.
        let mut state = b"\x80\x03]q\x01(".to_vec();
        state.extend(short_bytes(OID2));
        state.extend_from_slice(b"cBTrees.OOBTree\nOOBucket\n\x86q\x02Qh\x02Qe.");
        let original = record(CLASS3, &state);
        assert_eq!(refs(&original).unwrap().len(), 2);
        let rewritten = rewrite_references(&original, shift(1)).unwrap();
        let three = 3u64.to_be_bytes().to_vec();
        assert_eq!(refs(&rewritten).unwrap(), vec![three.clone(), three]);
    }

    #[test]
    fn references_that_are_not_binary_strings_can_not_be_rewritten() {
        // A text oid (BINUNICODE) can not hold any 8 bytes.
        let state = mapping_state(&pid_with_class(unicode(b"abcdefgh")));
        let original = record(CLASS3, &state);
        assert!(rewrite_references(&original, shift(1)).is_none());
        // Kept as it is, it needs no rewriting.
        assert!(rewrite_references(&original, |_| NewReference::Keep).is_some());
        // A truncated record can not be scanned.
        assert!(rewrite_references(&original[..original.len() - 3], shift(1)).is_none());
    }
}
