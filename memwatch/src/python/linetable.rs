//! Code objects' line tables: which source line an instruction is on.
//! Pure functions over the table's bytes (`co_linetable`), as CPython
//! writes them: PEP 626's (byte delta, line delta) pairs on 3.10, and the
//! compact position table of 3.11 on.

/// The line of the instruction at code unit `index` (2-byte units), or None
/// where the table says the instruction has no line.
pub fn line_at(table: &[u8], first_line: u32, index: u64, minor: u8) -> Option<u32> {
    if minor <= 10 {
        line_310(table, first_line, 2 * index)
    } else {
        line_311(table, first_line, index)
    }
}

/// 3.10: pairs of (byte delta u8, line delta i8); −128 means no line.
fn line_310(table: &[u8], first_line: u32, byte: u64) -> Option<u32> {
    let (mut line, mut end) = (i64::from(first_line), 0u64);
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        if delta != -128 {
            line += i64::from(delta);
        }
        if byte >= start && byte < end {
            return (delta != -128).then(|| u32::try_from(line).ok()).flatten();
        }
    }
    None
}

/// 3.11+: entries of a first byte `1cccclll` covering (lll + 1) code units,
/// code cccc saying how the line changes (see CPython's
/// Objects/locations.md).
fn line_311(table: &[u8], first_line: u32, index: u64) -> Option<u32> {
    let mut line = i64::from(first_line);
    let mut unit = 0u64;
    let mut i = 0usize;
    while i < table.len() {
        let b = table[i];
        i += 1;
        if b & 0x80 == 0 {
            return None; // not at an entry: a malformed table
        }
        let code = (b >> 3) & 15;
        let units = u64::from(b & 7) + 1;
        let has_line = match code {
            15 => false,
            14 => {
                // Checked: a corrupted table's deltas may sum past i64.
                line = line.checked_add(signed_varint(table, &mut i)?)?;
                for _ in 0..3 {
                    varint(table, &mut i)?;
                }
                true
            }
            13 => {
                line = line.checked_add(signed_varint(table, &mut i)?)?;
                true
            }
            10..=12 => {
                line += i64::from(code) - 10;
                i += 2;
                true
            }
            _ => {
                i += 1;
                true
            }
        };
        if index < unit + units {
            return has_line.then(|| u32::try_from(line).ok()).flatten();
        }
        unit += units;
    }
    None
}

fn varint(t: &[u8], i: &mut usize) -> Option<u64> {
    let mut b = *t.get(*i)?;
    *i += 1;
    let mut v = u64::from(b & 63);
    let mut shift = 0;
    while b & 64 != 0 {
        b = *t.get(*i)?;
        *i += 1;
        shift += 6;
        if shift > 60 {
            return None;
        }
        v |= u64::from(b & 63) << shift;
    }
    Some(v)
}

fn signed_varint(t: &[u8], i: &mut usize) -> Option<i64> {
    let v = varint(t, i)?;
    Some(if v & 1 != 0 {
        -((v >> 1) as i64)
    } else {
        (v >> 1) as i64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_310_table_decodes_to_its_lines() {
        // alloc_loop at line 35 (checked against co_lines() under 3.10):
        // [0,4)→35, [4,6)→36, [6,20)→37, [20,32)→38, [32,40)→39, [40,42)→36.
        let t = [0x04, 0x01, 0x02, 0x01, 0x0e, 0x01, 0x0c, 0x01, 0x08, 0x01, 0x02, 0xfd];
        let lines: Vec<Option<u32>> = [0u64, 1, 2, 3, 10, 16, 19, 20]
            .iter()
            .map(|&i| line_at(&t, 34, i, 10))
            .collect();
        assert_eq!(
            lines,
            [
                Some(35),
                Some(35),
                Some(36),
                Some(37),
                Some(38),
                Some(39),
                Some(39),
                Some(36)
            ]
        );
        assert_eq!(line_at(&t, 34, 21, 10), None, "past the table");
        assert_eq!(line_at(&[0x02, 0x80], 10, 0, 10), None, "no line");
    }

    #[test]
    fn a_311_table_decodes_to_its_lines() {
        // leaf_sleep (3.12, first line 1, checked against co_positions()):
        // 80 00 | dc 04 08 | 87 4a | 81 4a | 88 74 | d5 04 14
        let t = [
            0x80, 0x00, 0xdc, 0x04, 0x08, 0x87, 0x4a, 0x81, 0x4a, 0x88, 0x74, 0xd5, 0x04, 0x14,
        ];
        // 1 unit at the first line; 5 a line further (code 11); then short
        // forms (code 0, 1) of 8, 2 and 1 units and 6 units of code 10 (no
        // change): 23 units.
        assert_eq!(line_at(&t, 1, 0, 12), Some(1));
        assert_eq!(line_at(&t, 1, 1, 12), Some(2));
        assert_eq!(line_at(&t, 1, 5, 12), Some(2));
        assert_eq!(line_at(&t, 1, 6, 12), Some(2));
        assert_eq!(line_at(&t, 1, 22, 12), Some(2));
        assert_eq!(line_at(&t, 1, 23, 12), None, "past the table");
        // Code 13: a signed varint delta (-3 = 7); code 15: no line.
        let t = [0xe8, 0x07, 0xf8];
        assert_eq!(line_at(&t, 10, 0, 11), Some(7));
        assert_eq!(line_at(&t, 10, 1, 11), None);
        // Malformed tables are None, not panics.
        assert_eq!(line_at(&[0x01], 1, 0, 11), None);
        assert_eq!(line_at(&[0xe8], 1, 0, 11), None);
    }
}
