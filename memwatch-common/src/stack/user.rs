use super::{MAX_STACK_DEPTH, StackFrames};

// SAFETY: #[repr(C)] array of u64.
unsafe impl aya::Pod for StackFrames {}

impl StackFrames {
    /// The captured frames, without the zero padding.
    pub fn addresses(&self) -> &[u64] {
        let n = self.frames.iter().position(|&f| f == 0).unwrap_or(MAX_STACK_DEPTH);
        &self.frames[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn frames(v: &[u64]) -> [u64; MAX_STACK_DEPTH] {
        let mut f = [0; MAX_STACK_DEPTH];
        f[..v.len()].copy_from_slice(v);
        f
    }

    #[test]
    fn window_stays_in_the_frame_pointers_page() {
        assert_eq!(window_len(0x7ffc_0000_1000), STACK_WINDOW as u64);
        assert_eq!(window_len(0x7ffc_0000_1f00), 0x100);
        assert_eq!(window_len(0x7ffc_0000_1f80), 0x80);
        assert_eq!(window_len(0x7ffc_0000_1ff0), 16);
        // The last word of a page: the frame straddles two pages.
        assert_eq!(window_len(0x7ffc_0000_1ff8), 16);
    }

    #[test]
    fn frames_are_found_only_whole_inside_the_window() {
        let base = 0x7ffc_0000_1000;
        assert_eq!(frame_in_window(base, base, 256), Some(0));
        assert_eq!(frame_in_window(base + 0x30, base, 256), Some(6));
        assert_eq!(frame_in_window(base + 240, base, 256), Some(30));
        assert_eq!(frame_in_window(base + 248, base, 256), None);
        assert_eq!(frame_in_window(base - 16, base, 256), None);
        assert_eq!(frame_in_window(base + 16, base, 16), None);
        assert_eq!(frame_in_window(base, base, 0), None);
        // Before the first read, however large the pointer.
        let (b, l) = NO_WINDOW;
        assert_eq!(frame_in_window(0xffff_ffff_ffff_fff0, b, l), None);
        assert_eq!(frame_in_window(0x7ffc_0000_1000, b, l), None);
    }

    #[test]
    fn hash_depends_on_content_and_order_only() {
        let a = stack_hash(&frames(&[0x401000, 0x402000]));
        assert_eq!(a, stack_hash(&frames(&[0x401000, 0x402000])));
        assert_ne!(a, stack_hash(&frames(&[0x402000, 0x401000])));
        assert_ne!(a, stack_hash(&frames(&[0x401000])));
        assert_ne!(stack_hash(&frames(&[])), 0);
    }

    #[test]
    fn incremental_hashing_matches() {
        let f = frames(&[0x401000, 0x402000, 0x403000]);
        let mut h = StackHasher::new();
        for x in &f[..3] {
            h.push(*x);
        }
        assert_eq!(h.finish(), stack_hash(&f));
    }

    #[test]
    fn addresses_stop_at_the_padding() {
        let s = StackFrames {
            frames: frames(&[1, 2, 3]),
        };
        assert_eq!(s.addresses(), &[1, 2, 3]);
    }
}
