use std::fmt;

use super::{CallKind, Family};

impl fmt::Display for CallKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn cookie_round_trips_every_kind_and_offset() {
        for kind in CallKind::ALL {
            for sp_words in [0u8, 1, 3, 255] {
                for (ctx_arg, chunk_header) in [(false, false), (true, false), (false, true), (true, true)] {
                    let c = ProbeCookie {
                        kind,
                        family: Family::Python,
                        sp_words,
                        ctx_arg,
                        chunk_header,
                    };
                    assert_eq!(ProbeCookie::decode(c.encode()), Some(c));
                }
            }
        }
    }

    #[test]
    fn unknown_cookie_is_rejected() {
        assert_eq!(ProbeCookie::decode(0), None);
        assert_eq!(ProbeCookie::decode(0xff), None);
        assert_eq!(ProbeCookie::decode(CallKind::Malloc as u64), None);
    }

    #[test]
    fn entry_sp_accounts_for_pushes() {
        let c = ProbeCookie {
            kind: CallKind::Free,
            family: Family::Libc,
            sp_words: 2,
            ctx_arg: false,
            chunk_header: false,
        };
        assert_eq!(c.entry_sp(0x1000), 0x1010);
    }
}
