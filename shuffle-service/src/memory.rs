//! Giving freed memory back to the system after a burst of connections.
//!
//! Each Spark connection holds buffers and task state of a few tens of KiB. glibc's malloc
//! keeps what thousands of closed connections freed inside its per-thread arenas, so after a
//! flood the service stayed near 100 MiB resident (9 MiB idle). `malloc_trim(0)` returns every
//! free page of every arena; it is called on the blocking pool when the number of open
//! connections has fallen to half of its peak since the last trim (and the peak was large
//! enough to matter). Every listener does this, counting connections from the accept, so a
//! burst of TLS handshakes (tens of KiB of buffers and key schedules each), failed ones
//! included, is given back as well. mimalloc was measured too: it held more at idle (19 MiB) and returned the
//! memory only seconds later, when other work ran on the threads that had allocated it.

use std::sync::Mutex;

/// Connections below which a burst is too small to be worth a trim.
const MIN_PEAK: usize = 64;

/// Tracks the peak of open connections and decides when to trim.
#[derive(Debug, Default)]
pub(crate) struct Trimmer {
    peak: Mutex<usize>,
}

impl Trimmer {
    /// Records the open count after a connection opened.
    pub(crate) fn opened(&self, open: usize) {
        let mut p = self.peak.lock().unwrap_or_else(|e| e.into_inner());
        *p = (*p).max(open);
    }

    /// Records the open count after a connection closed; returns whether to trim now.
    pub(crate) fn closed(&self, open: usize) -> bool {
        let mut p = self.peak.lock().unwrap_or_else(|e| e.into_inner());
        if *p >= MIN_PEAK && open * 2 <= *p {
            *p = open;
            true
        } else {
            false
        }
    }
}

/// Returns free heap memory to the system (blocking: it walks every arena).
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer and only reorganises the allocator's own free
        // lists under its locks; it is safe to call from any thread at any time.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_the_open_count_halves_after_a_large_peak() {
        let t = Trimmer::default();
        for n in 1..=10 {
            t.opened(n);
        }
        assert!(!t.closed(0), "a small burst is not worth a trim");
        let t = Trimmer::default();
        for n in 1..=1000 {
            t.opened(n);
        }
        assert!(!t.closed(999));
        assert!(!t.closed(501));
        assert!(t.closed(500));
        // The peak restarts from what is open now.
        assert!(!t.closed(300));
        assert!(t.closed(250));
    }
}
