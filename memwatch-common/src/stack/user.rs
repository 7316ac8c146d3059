use super::{MAX_STACK_DEPTH, StackFrames};

// SAFETY: #[repr(C)] array of u64.
unsafe impl aya::Pod for StackFrames {}

impl StackFrames {
    /// The captured frames, without the zero padding.
    pub fn addresses(&self) -> &[u64] {
        let n = self.frames.iter().position(|&f| f == 0).unwrap_or(MAX_STACK_DEPTH);
        &self.frames[..n]
    }

    /// Why the walk stopped (None: a value this daemon does not know).
    pub fn end_reason(&self) -> Option<crate::unwind::EndReason> {
        crate::unwind::EndReason::from_u64(self.end & 0xff)
    }

    /// The Python frames recorded, innermost first.
    pub fn python(&self) -> &[crate::python::PyFrame] {
        let n = ((self.end >> super::END_PY_SHIFT) & 0xff) as usize;
        &self.py[..n.min(crate::python::MAX_PY_FRAMES)]
    }

    /// Whether the thread had more Python frames than were kept.
    pub fn python_truncated(&self) -> bool {
        self.end & super::END_PY_TRUNCATED != 0
    }

    /// Whether it was walked by frame pointers alone.
    pub fn frame_pointers_only(&self) -> bool {
        self.end & super::END_FRAME_POINTERS != 0
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
    fn the_window_stays_in_its_page() {
        assert_eq!(window_len_at(0x7ffc_0000_1000), STACK_WINDOW as u64);
        assert_eq!(window_len_at(0x7ffc_0000_1f00), 0x100);
        assert_eq!(window_len_at(0x7ffc_0000_1f80), 0x80);
        assert_eq!(window_len_at(0x7ffc_0000_1ff8), 8);
    }

    fn stack(v: &[u64], end: u64) -> StackFrames {
        StackFrames {
            frames: frames(v),
            end,
            py: [Default::default(); crate::python::MAX_PY_FRAMES],
        }
    }

    #[test]
    fn hash_depends_on_content_order_and_end_only() {
        let a = stack_hash(&stack(&[0x401000, 0x402000], 0));
        assert_eq!(a, stack_hash(&stack(&[0x401000, 0x402000], 0)));
        assert_ne!(a, stack_hash(&stack(&[0x402000, 0x401000], 0)));
        assert_ne!(a, stack_hash(&stack(&[0x401000], 0)));
        assert_ne!(a, stack_hash(&stack(&[0x401000, 0x402000], 1)));
        assert_ne!(stack_hash(&stack(&[], 0)), 0);
        // Python frames count, when recorded.
        let mut py = stack(&[0x401000, 0x402000], 1 << END_PY_SHIFT);
        let base = stack_hash(&py);
        py.py[0].code = 0x7000;
        assert_ne!(stack_hash(&py), base);
        py.py[1].code = 0x8000;
        assert_eq!(
            stack_hash(&py),
            stack_hash(&{
                let mut q = py;
                q.py[1].code = 0;
                q
            }),
            "frames past the count do not"
        );
    }

    #[test]
    fn incremental_hashing_matches() {
        let f = stack(&[0x401000, 0x402000, 0x403000], 3);
        let mut h = StackHasher::new();
        for x in &f.frames[..3] {
            h.push(*x);
        }
        let h = StackHasher::resume(h.state());
        let mut h = h;
        h.push(3);
        assert_eq!(h.finish(), stack_hash(&f));
    }

    #[test]
    fn addresses_stop_at_the_padding() {
        let s = stack(&[1, 2, 3], 0);
        assert_eq!(s.addresses(), &[1, 2, 3]);
    }
}
