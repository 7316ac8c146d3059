use super::{EventKind, ProcEvent, Settings};

// SAFETY: #[repr(C)] plain integers.
unsafe impl aya::Pod for ProcEvent {}
unsafe impl aya::Pod for Settings {}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(EventKind::Exec),
            2 => Some(EventKind::Exit),
            3 => Some(EventKind::Fork),
            4 => Some(EventKind::CodeMapped),
            5 => Some(EventKind::OomVictim),
            6 => Some(EventKind::OomdKill),
            _ => None,
        }
    }
}

impl ProcEvent {
    /// Decodes a ring buffer record, refusing short ones.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked; ProcEvent is plain old data of any bit pattern.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_from_ring_records() {
        let e = ProcEvent {
            kind: 2,
            tgid: 42,
            generation: 7,
            parent_tgid: 0,
            timestamp_ns: 9,
        };
        // SAFETY: viewing a POD value as bytes.
        let bytes =
            unsafe { core::slice::from_raw_parts((&e as *const ProcEvent).cast::<u8>(), size_of::<ProcEvent>()) };
        assert_eq!(ProcEvent::from_bytes(bytes), Some(e));
        assert_eq!(ProcEvent::from_bytes(&bytes[..8]), None);
        assert_eq!(EventKind::from_u32(e.kind), Some(EventKind::Exit));
        assert_eq!(EventKind::from_u32(0), None);
    }
}
