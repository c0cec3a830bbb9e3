//! LEB128 unsigned varints for the manifest encoding.
use crate::error::{Error, Result};

/// Appends `v` as an unsigned LEB128 varint.
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint from `buf` at `*pos`, advancing it.
pub fn get(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf
            .get(*pos)
            .ok_or_else(|| Error::corrupt("varint", "truncated"))?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err(Error::corrupt("varint", "overflows u64"));
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Error::corrupt("varint", "too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(v in any::<u64>()) {
            let mut b = Vec::new();
            put(&mut b, v);
            let mut p = 0;
            prop_assert_eq!(get(&b, &mut p).unwrap(), v);
            prop_assert_eq!(p, b.len());
        }
    }

    #[test]
    fn truncated_is_an_error() {
        let mut p = 0;
        assert!(get(&[0x80, 0x80], &mut p).is_err());
    }
}
