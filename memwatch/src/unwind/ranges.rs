//! Ranges of the kernel's rows array, handed out per object table:
//! first fit over a sorted free list, neighbours merged on release.

#[derive(Debug, Clone)]
pub struct Ranges {
    /// Free (start, len), sorted by start, never adjacent.
    free: Vec<(u32, u32)>,
    capacity: u32,
}

impl Ranges {
    pub fn new(capacity: u32) -> Self {
        Ranges {
            free: vec![(0, capacity)],
            capacity,
        }
    }

    /// The start of `len` free rows, taken; None if no gap is that large.
    pub fn take(&mut self, len: u32) -> Option<u32> {
        let i = self.free.iter().position(|&(_, l)| l >= len)?;
        let (start, l) = self.free[i];
        if l == len {
            self.free.remove(i);
        } else {
            self.free[i] = (start + len, l - len);
        }
        Some(start)
    }

    /// Gives rows `[start, start + len)` back.
    pub fn give(&mut self, start: u32, len: u32) {
        if len == 0 {
            return;
        }
        let i = self.free.partition_point(|&(s, _)| s < start);
        self.free.insert(i, (start, len));
        // Merge with the next, then with the previous.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    pub fn used(&self) -> u32 {
        self.capacity - self.free.iter().map(|&(_, l)| l).sum::<u32>()
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_ranges_do_not_overlap_and_come_back_whole() {
        let mut r = Ranges::new(100);
        let a = r.take(30).unwrap();
        let b = r.take(30).unwrap();
        let c = r.take(40).unwrap();
        assert_eq!((a, b, c), (0, 30, 60));
        assert_eq!(r.take(1), None);
        assert_eq!(r.used(), 100);
        r.give(b, 30);
        assert_eq!(r.take(31), None, "a gap of 30 holds no 31");
        r.give(a, 30);
        assert_eq!(r.take(60), Some(0), "neighbours merged");
        r.give(0, 60);
        r.give(c, 40);
        assert_eq!(r.used(), 0);
        assert_eq!(r.take(100), Some(0));
    }
}
