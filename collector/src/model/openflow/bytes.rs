//! The codec's bounds-checked big-endian reader, its decode error, and the experimenter ids its
//! match fields and actions carry. Nothing here indexes wire data without a bounds check.

/// OpenFlow wire data that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// A structure ended before its fixed part or its declared length.
    #[error("truncated OpenFlow data: {what} needs {need} bytes, {have} left")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A length or field value that cannot be right.
    #[error("malformed OpenFlow data: {0}")]
    Malformed(String),
}

/// ONF experimenter id (`0x4f4e4600`), used by OVS for OF1.3 extensions.
pub(crate) const ONF_EXPERIMENTER: u32 = 0x4f4e_4600;
/// Nicira experimenter id.
pub(crate) const NX_EXPERIMENTER: u32 = 0x0000_2320;
/// Result alias of the codec.
pub(crate) type DecodeResult<T> = Result<T, DecodeError>;

/// A bounds-checked big-endian reader over a byte slice.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rd<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Rd<'a> {
    /// Reader over `buf`; `what` names the structure in errors.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    /// Bytes left.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The remaining bytes.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what: self.what,
                need: n,
                have: self.buf.len(),
            });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// Skips `n` bytes.
    pub(crate) fn skip(&mut self, n: usize) -> DecodeResult<()> {
        self.take(n).map(|_| ())
    }

    /// Reads a byte.
    pub(crate) fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a big-endian u16.
    pub(crate) fn u16(&mut self) -> DecodeResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a big-endian u32.
    pub(crate) fn u32(&mut self) -> DecodeResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a big-endian u64.
    pub(crate) fn u64(&mut self) -> DecodeResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// Rounds `n` up to a multiple of 8 (OpenFlow alignment).
pub(crate) fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}
