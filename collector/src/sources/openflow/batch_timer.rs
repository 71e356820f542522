//! A one-shot timer on a `timerfd(2)` for the mirror's batch window ([`super::client::BATCH_WINDOW`]):
//! it wakes the thread once, at its deadline. A tokio timer more than 64 ms away wakes it twice
//! (once when its wheel moves the entry down a level, once at the deadline), and on a VM each
//! wake-up costs tens of microseconds: with a window every few hundred milliseconds, that second
//! wake-up was a fifth of the mirror's cost under a steady stream of changes.
#![allow(unsafe_code)] // timerfd_create, timerfd_settime and read on a descriptor this module owns.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A `CLOCK_MONOTONIC` timerfd registered with the runtime's reactor.
#[derive(Debug)]
pub(crate) struct BatchTimer {
    fd: AsyncFd<OwnedFd>,
}

impl BatchTimer {
    /// A disarmed timer.
    pub(crate) fn new() -> io::Result<BatchTimer> {
        // SAFETY: plain syscall; the returned descriptor is checked and then owned.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `OwnedFd` keeps the descriptor open, and always the same one, until the
        // `AsyncFd` (which owns it) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
        Ok(BatchTimer {
            fd: fd.map_err(|e| e.into_parts().1)?,
        })
    }

    /// Arms the timer to expire `after` from now (at least 1 µs), replacing any earlier deadline.
    pub(crate) fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(after.subsec_nanos()),
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for (null).
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until the armed deadline has passed (forever when disarmed).
    pub(crate) async fn expired(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                let mut count = [0u8; 8];
                // SAFETY: reads at most 8 bytes into an 8-byte buffer.
                let n = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
            match read {
                Ok(result) => return result,
                // Not expired yet (EAGAIN): wait for the next readiness.
                Err(_would_block) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn expires_once_at_its_deadline_and_not_before() {
        let t = BatchTimer::new().unwrap();
        let t0 = Instant::now();
        t.arm(Duration::from_millis(30)).unwrap();
        t.expired().await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(30));
        // Re-armed: a later deadline replaces the fired one; nothing is left over from it.
        let t1 = Instant::now();
        t.arm(Duration::from_millis(20)).unwrap();
        t.expired().await.unwrap();
        assert!(t1.elapsed() >= Duration::from_millis(20));
        // Disarmed (never armed again): it does not fire.
        let waited = tokio::time::timeout(Duration::from_millis(50), t.expired()).await;
        assert!(waited.is_err(), "a timer that was not re-armed fired");
    }
}
