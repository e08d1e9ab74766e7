//! Protobuf's wire format, as much as the OTLP encoder needs: field sizes measured up front
//! and a writer that puts fields in order.

// Protobuf wire types.
pub(super) const VARINT: u32 = 0;
pub(super) const FIXED64: u32 = 1;
pub(super) const LEN: u32 = 2;
pub(super) const FIXED32: u32 = 5;

#[inline]
pub(super) fn varint_len(v: u64) -> usize {
    // 7 bits per byte; zero takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
pub(super) fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// A length-delimited field holding `len` bytes.
#[inline]
pub(super) fn field_len(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

/// A string or bytes field, omitted when empty (proto3).
#[inline]
pub(super) fn string_len(field: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(field, s.len())
    }
}

#[inline]
pub(super) fn varint_field_len(field: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        tag_len(field) + varint_len(v)
    }
}

#[inline]
pub(super) fn fixed64_field_len(field: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        tag_len(field) + 8
    }
}

/// A bytes field, omitted when empty (proto3).
#[inline]
pub(super) fn bytes_len(field: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        field_len(field, b.len())
    }
}

/// Protobuf output, written in field order with the lengths measured above.
#[derive(Default)]
pub(super) struct Proto(pub(super) Vec<u8>);

impl Proto {
    #[inline]
    pub(super) fn varint(&mut self, mut v: u64) {
        if v < 0x80 {
            self.0.push(v as u8);
            return;
        }
        let mut buf = [0u8; 10];
        let mut n = 0;
        while v >= 0x80 {
            buf[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        buf[n] = v as u8;
        self.0.extend_from_slice(&buf[..=n]);
    }

    #[inline]
    pub(super) fn tag(&mut self, field: u32, wire_type: u32) {
        self.varint(u64::from(field << 3 | wire_type));
    }

    #[inline]
    pub(super) fn message_header(&mut self, field: u32, len: usize) {
        self.tag(field, LEN);
        self.varint(len as u64);
    }

    #[inline]
    pub(super) fn bytes(&mut self, field: u32, b: &[u8]) {
        self.message_header(field, b.len());
        self.0.extend_from_slice(b);
    }

    /// A string field, omitted when empty (proto3).
    #[inline]
    pub(super) fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    pub(super) fn varint_field(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.tag(field, VARINT);
            self.varint(v);
        }
    }

    pub(super) fn fixed64_field(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.tag(field, FIXED64);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    pub(super) fn fixed32_field(&mut self, field: u32, v: u32) {
        self.tag(field, FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}
