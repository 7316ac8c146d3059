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
