//! Full decoders and encoders for RowDescription and DataRow, the two messages a result merge
//! has to look inside. Pass-through forwarding never needs them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Result;
use crate::frame::write_frame;
use crate::frontend::{count16, len32};
use crate::reader::{put_cstr, Reader};
use crate::tag;

/// Bytes of a RowDescription field after its name.
const FIELD_FIXED_LEN: usize = 18;

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    /// Column name.
    pub name: String,
    /// OID of the source table, or 0.
    pub table_oid: u32,
    /// Attribute number in the source table, or 0.
    pub column_attr: i16,
    /// OID of the column's type.
    pub type_oid: u32,
    /// Type size (`pg_type.typlen`); negative for variable width.
    pub type_len: i16,
    /// Type modifier (`pg_attribute.atttypmod`).
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// A decoded RowDescription.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowDescription {
    /// Columns in order.
    pub fields: Vec<FieldDescription>,
}

/// Reads one field; the name is returned raw so validation need not care about its encoding.
fn read_field<'a>(r: &mut Reader<'a>) -> Result<(&'a [u8], FieldDescription)> {
    let name = r.cstr()?;
    let field = FieldDescription {
        name: String::new(),
        table_oid: r.u32()?,
        column_attr: r.i16()?,
        type_oid: r.u32()?,
        type_len: r.i16()?,
        type_modifier: r.i32()?,
        format: r.i16()?,
    };
    Ok((name, field))
}

impl RowDescription {
    /// Decodes a RowDescription body. Column names must be UTF-8: rewriting one lossily would
    /// silently rename the client's column, which is worse than a clear error.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "RowDescription");
        let n = r.count16()?;
        let mut fields = Vec::with_capacity(n.min(r.remaining() / (FIELD_FIXED_LEN + 1)));
        for _ in 0..n {
            let (name, mut field) = read_field(&mut r)?;
            field.name = std::str::from_utf8(name)
                .map_err(|_| r.err("invalid UTF-8"))?
                .to_owned();
            fields.push(field);
        }
        r.finish()?;
        Ok(Self { fields })
    }

    /// Checks a body's layout without allocating (names are not checked for UTF-8).
    pub(crate) fn validate(body: &[u8]) -> Result<()> {
        let mut r = Reader::new(body, "RowDescription");
        for _ in 0..r.count16()? {
            read_field(&mut r)?;
        }
        r.finish()
    }

    /// Appends the body, without tag or length.
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u16(count16(self.fields.len()));
        for f in &self.fields {
            put_cstr(dst, f.name.as_bytes());
            dst.put_u32(f.table_oid);
            dst.put_i16(f.column_attr);
            dst.put_u32(f.type_oid);
            dst.put_i16(f.type_len);
            dst.put_i32(f.type_modifier);
            dst.put_i16(f.format);
        }
    }

    /// Appends a complete RowDescription frame.
    pub fn encode(&self, dst: &mut BytesMut) {
        write_frame(tag::ROW_DESCRIPTION, dst, |d| self.encode_body(d));
    }
}

/// A DataRow borrowing its body: validated once, then iterated without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRowRef<'a> {
    count: usize,
    /// The values region after the column count.
    values: &'a [u8],
}

impl<'a> DataRowRef<'a> {
    /// Validates a DataRow body: every length is -1 or fits in what remains, nothing trails.
    pub fn decode(body: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(body, "DataRow");
        let count = r.count16()?;
        let values = r.clone().rest();
        for _ in 0..count {
            r.nullable_bytes()?;
        }
        r.finish()?;
        Ok(Self { count, values })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True for a row with no columns.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Column values in order; `None` is SQL NULL.
    pub fn iter(&self) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        let mut r = Reader::new(self.values, "DataRow");
        // Validated by `decode`; stopping on error keeps this total without an unwrap.
        std::iter::from_fn(move || match r.remaining() {
            0 => None,
            _ => r.nullable_bytes().ok(),
        })
    }
}

/// A decoded DataRow whose values share the frame body's allocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataRow {
    /// Column values in order; `None` is SQL NULL.
    pub values: Vec<Option<Bytes>>,
}

impl DataRow {
    /// Decodes a DataRow body; values are zero-copy slices of `body`.
    pub fn decode(body: &Bytes) -> Result<Self> {
        let row = DataRowRef::decode(body)?;
        let values = row.iter().map(|v| v.map(|v| body.slice_ref(v))).collect();
        Ok(Self { values })
    }

    /// Appends a complete DataRow frame.
    pub fn encode(&self, dst: &mut BytesMut) {
        write_frame(tag::DATA_ROW, dst, |d| {
            put_values(
                d,
                self.values.len(),
                self.values.iter().map(Option::as_deref),
            );
        });
    }
}

/// Appends a complete DataRow frame built from borrowed values, without allocating.
pub fn encode_data_row(values: &[Option<&[u8]>], dst: &mut BytesMut) {
    write_frame(tag::DATA_ROW, dst, |d| {
        put_values(d, values.len(), values.iter().copied());
    });
}

fn put_values<'v>(d: &mut BytesMut, n: usize, values: impl Iterator<Item = Option<&'v [u8]>>) {
    d.put_u16(count16(n));
    for value in values {
        match value {
            None => d.put_i32(-1),
            Some(v) => {
                d.put_i32(len32(v.len()));
                d.extend_from_slice(v);
            }
        }
    }
}

#[cfg(test)]
#[path = "rows_tests.rs"]
mod tests;
