use super::LiveSlot;

// SAFETY: #[repr(C)] plain integers with explicit padding.
unsafe impl aya::Pod for LiveSlot {}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn slots_are_within_the_mask() {
        for mask in [0u32, 1, 0xff, 0xfffff] {
            for i in 0..10_000u64 {
                assert!(slot_index(1234, 7, 0x5555_0000_0000 + i * 48, mask) <= mask);
            }
        }
    }

    #[test]
    fn strided_addresses_spread_like_random_ones() {
        // 4096 blocks of 16 to 4096 bytes in a 4096-slot table: random
        // placement leaves 1/e of the slots empty (~1507); a hash that piles
        // strided addresses into some slots leaves many more.
        let mask = 4095;
        for stride in [16u64, 32, 64, 4096] {
            let mut used = [false; 4096];
            for i in 0..4096u64 {
                used[slot_index(4321, 1 << 16, 0x55d0_0000_0000 + i * stride, mask) as usize] = true;
            }
            let empty = used.iter().filter(|u| !**u).count();
            assert!(empty < 1650, "stride {stride}: {empty} empty slots");
        }
    }

    #[test]
    fn owners_of_the_same_address_get_different_slots() {
        // Forked workers share their heap layout; they should not share slots.
        let mask = (1 << 18) - 1;
        let addr = 0x55d0_1234_5670;
        let distinct: std::collections::BTreeSet<u32> =
            (0..64).map(|pid| slot_index(1000 + pid, 1 << 16, addr, mask)).collect();
        assert!(distinct.len() >= 60, "{} distinct slots of 64", distinct.len());
        assert_ne!(
            slot_index(1000, 1 << 16, addr, mask),
            slot_index(1000, (1 << 16) + 1, addr, mask)
        );
    }

    #[test]
    fn the_layout_is_what_the_programs_index() {
        assert_eq!(size_of::<LiveSlot>(), 48);
        assert_eq!(core::mem::offset_of!(LiveSlot, addr), 0);
        assert_ne!(EMPTY, BUSY);
    }
}
