//! The dump parasite's wire format, compiled from the same file as the blob
//! (`parasite/src/common/dump_proto.rs`), plus layout tests.

#[path = "../../parasite/src/common/dump_proto.rs"]
mod shared;

pub use shared::*;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn wire_structs_have_the_documented_sizes() {
        assert_eq!(size_of::<ParasiteArgs>(), 64);
        assert_eq!(size_of::<CmdHeader>(), 8);
        assert_eq!(size_of::<ReplyHeader>(), 16);
        assert_eq!(size_of::<RemoteIov>(), 16);
        assert_eq!(size_of::<MprotectReq>(), 24);
        assert_eq!(size_of::<FdOpts>(), 24);
        assert_eq!(size_of::<KSigaction>(), 32);
        assert_eq!(size_of::<Itimerval>(), 32);
        assert_eq!(size_of::<Rlimit>(), 16);
        assert_eq!(
            size_of::<MiscState>(),
            8 + 10 * 4 + 3 * 32 + RLIMITS * 16 + 8
        );
        assert_eq!(size_of::<PosixTimerState>(), 40);
        assert_eq!(size_of::<ThreadState>(), 384);
        assert!(size_of::<ThreadState>() + 64 <= THREAD_SLOT);
        // Biggest replies fit a message.
        assert!(size_of::<ReplyHeader>() + 64 * size_of::<KSigaction>() <= MAX_MSG);
        assert!(size_of::<CmdHeader>() + MAX_IOVS * size_of::<RemoteIov>() <= MAX_MSG);
        assert!(size_of::<ReplyHeader>() + MAX_TIMERS * size_of::<PosixTimerState>() <= MAX_MSG);
    }

    #[test]
    fn bytes_roundtrip_and_short_input() {
        let iov = RemoteIov {
            base: 0x1000,
            len: 0x2000,
        };
        assert_eq!(read::<RemoteIov>(bytes_of(&iov)), Some(iov));
        assert_eq!(read::<RemoteIov>(&bytes_of(&iov)[..15]), None);
        let list = [iov, RemoteIov { base: 7, len: 8 }];
        assert_eq!(
            read_at::<RemoteIov>(bytes_of_slice(&list), 1),
            Some(list[1])
        );
        assert_eq!(read_at::<RemoteIov>(bytes_of_slice(&list), 2), None);
        assert_eq!(
            read_at::<RemoteIov>(bytes_of_slice(&list), usize::MAX),
            None
        );
    }
}
