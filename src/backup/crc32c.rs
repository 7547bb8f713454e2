//! CRC-32C (Castagnoli, reflected 0x82F63B78), the checksum of
//! PostgreSQL's `backup_manifest` (INIT, COMP and FIN_CRC32C). Every byte
//! of a copy is checksummed twice (as it is written, and when the end
//! check reads it back), so it runs on the CPU's own `crc32` instruction
//! where there is one (SSE 4.2 on x86-64): three independent lanes of a
//! block at once, since one lane waits for each instruction's result,
//! then the lanes' registers combined. Elsewhere, slicing-by-8 tables.

/// Lookup tables for slicing-by-8: `[0]` is the classic byte table, `[k]`
/// advances a byte through `k` more zero bytes.
const TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        s += 1;
    }
    t
};

/// CRC-32C of `bytes`.
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    !update(!0, bytes)
}

/// Advance the (pre-inverted) CRC-32C register `crc` over `bytes`.
pub(crate) fn update(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE 4.2, checked just above.
            return unsafe { hw::update(crc, bytes) };
        }
    }
    update_table(crc, bytes)
}

/// [`update`] by the tables (any CPU).
fn update_table(mut crc: u32, bytes: &[u8]) -> u32 {
    let t = &TABLES;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let lo = crc ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        crc = t[7][(lo & 0xFF) as usize]
            ^ t[6][((lo >> 8) & 0xFF) as usize]
            ^ t[5][((lo >> 16) & 0xFF) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][w[4] as usize]
            ^ t[2][w[5] as usize]
            ^ t[1][w[6] as usize]
            ^ t[0][w[7] as usize];
    }
    for &b in words.remainder() {
        crc = t[0][((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// The SSE 4.2 `crc32` instruction (same polynomial and bit order).
#[cfg(target_arch = "x86_64")]
mod hw {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    use std::sync::OnceLock;

    /// Bytes of each of a block's three lanes. The instruction's latency
    /// is three times its issue interval: three lanes keep it busy.
    pub(super) const LANE: usize = 4096;

    /// Advancing a register over [`LANE`] zero bytes, a linear map (no
    /// inversion inside a register's update), by bytes of the register:
    /// `[k][b]` is the image of byte value `b` at byte `k`.
    struct Shift([[u32; 256]; 4]);

    impl Shift {
        fn apply(&self, crc: u32) -> u32 {
            let t = &self.0;
            t[0][(crc & 0xFF) as usize]
                ^ t[1][((crc >> 8) & 0xFF) as usize]
                ^ t[2][((crc >> 16) & 0xFF) as usize]
                ^ t[3][(crc >> 24) as usize]
        }
    }

    /// The shift over [`LANE`] zeros, from the images of the 32
    /// single-bit registers (made once, with the instruction itself).
    ///
    /// # Safety
    /// The CPU must have SSE 4.2.
    #[target_feature(enable = "sse4.2")]
    unsafe fn shift() -> &'static Shift {
        static SHIFT: OnceLock<Shift> = OnceLock::new();
        SHIFT.get_or_init(|| {
            let zeros = [0u8; LANE];
            // SAFETY: the caller's CPU has SSE 4.2.
            let bit: Vec<u32> = (0..32)
                .map(|i| unsafe { one_lane(1 << i, &zeros) })
                .collect();
            let mut t = [[0u32; 256]; 4];
            for (k, table) in t.iter_mut().enumerate() {
                for (b, image) in table.iter_mut().enumerate() {
                    *image = (0..8)
                        .filter(|j| b & (1 << j) != 0)
                        .fold(0, |acc, j| acc ^ bit[8 * k + j]);
                }
            }
            Shift(t)
        })
    }

    fn word(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    }

    /// One lane: eight bytes per instruction, one after another.
    ///
    /// # Safety
    /// The CPU must have SSE 4.2.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn one_lane(crc: u32, bytes: &[u8]) -> u32 {
        let mut words = bytes.chunks_exact(8);
        let mut wide = u64::from(crc);
        for w in &mut words {
            wide = _mm_crc32_u64(wide, word(w, 0));
        }
        // The instruction leaves the 32-bit register in the low half.
        let mut crc = wide as u32;
        for &b in words.remainder() {
            crc = _mm_crc32_u8(crc, b);
        }
        crc
    }

    /// Whole blocks of three lanes at once, the rest in one lane.
    ///
    /// # Safety
    /// The CPU must have SSE 4.2.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn update(mut crc: u32, bytes: &[u8]) -> u32 {
        let mut blocks = bytes.chunks_exact(3 * LANE);
        if bytes.len() >= 3 * LANE {
            let shift = shift();
            for block in &mut blocks {
                let (mut a, mut b, mut c) = (u64::from(crc), 0u64, 0u64);
                for at in (0..LANE).step_by(8) {
                    a = _mm_crc32_u64(a, word(block, at));
                    b = _mm_crc32_u64(b, word(block, LANE + at));
                    c = _mm_crc32_u64(c, word(block, 2 * LANE + at));
                }
                // update(r, A B) = shift(update(r, A)) ^ update(0, B).
                crc = shift.apply(a as u32) ^ b as u32;
                crc = shift.apply(crc) ^ c as u32;
            }
        }
        one_lane(crc, blocks.remainder())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn slicing_by_eight_matches_the_bytewise_crc() {
        let data: Vec<u8> = (0..10_007u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut bytewise = !0u32;
        for &b in &data {
            bytewise = TABLES[0][((bytewise ^ b as u32) & 0xFF) as usize] ^ (bytewise >> 8);
        }
        assert_eq!(!update_table(!0, &data), !bytewise);
        // Any split of the input gives the same result.
        let mut crc = !0;
        for part in data.chunks(13) {
            crc = update(crc, part);
        }
        assert_eq!(!crc, !bytewise);
    }

    #[test]
    fn the_cpu_instruction_matches_the_tables_at_every_length_and_offset() {
        // Past two whole blocks of three lanes, at odd offsets and lengths.
        let data: Vec<u8> = (0..30_011u32).map(|i| (i * 131 % 253) as u8).collect();
        let lengths = [
            0, 1, 7, 8, 9, 63, 1_000, 12_287, 12_288, 12_289, 24_577, 30_000,
        ];
        for start in [0, 1, 3, 8, 11] {
            for len in lengths {
                let part = &data[start..start + len];
                let seed = 0x1234_5678 ^ len as u32;
                assert_eq!(
                    update(seed, part),
                    update_table(seed, part),
                    "start {start}, length {len}"
                );
            }
        }
    }
}
