use super::{PyFrame, PyProc};

// SAFETY: #[repr(C)] plain integers.
unsafe impl aya::Pod for PyFrame {}
unsafe impl aya::Pod for PyProc {}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn thread_specific_data_is_found_like_glibc_does() {
        // pthread_getspecific on glibc 2.36 x86-64.
        assert_eq!(tsd_slot(0x7000_0000, 0), TsdSlot::Direct(0x7000_0000 + 0x318));
        assert_eq!(tsd_slot(0x7000_0000, 1), TsdSlot::Direct(0x7000_0000 + 0x328));
        assert_eq!(
            tsd_slot(0x7000_0000, 31),
            TsdSlot::Direct(0x7000_0000 + 0x310 + 496 + 8)
        );
        assert_eq!(
            tsd_slot(0x7000_0000, 33),
            TsdSlot::Indirect {
                block: 0x7000_0000 + 0x518,
                offset: 16 + 8
            }
        );
    }

    #[test]
    fn entry_marks_fit_beside_user_addresses() {
        // User addresses are below 2^47 on x86-64.
        assert_eq!(0x7fff_ffff_ffff_u64 & PY_ENTRY, 0);
        assert_eq!(size_of::<PyFrame>(), 16);
    }
}
