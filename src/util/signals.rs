//! Ctrl-C and SIGTERM as a flag, for work that stops cleanly.

use std::sync::Arc;

/// Turns SIGINT/SIGTERM into a flag that long work checks at safe points
/// (between chunks, between copies). `build` holds one for its whole run, so
/// Ctrl-C during replication is not lost once Packer's own handler is gone;
/// `quiet` mutes the notices while Packer prints its own. Unregistered when dropped.
pub struct SignalWatch(Option<signal_hook::iterator::Handle>);

impl SignalWatch {
    pub fn start(
        flag: Arc<std::sync::atomic::AtomicBool>,
        quiet: Arc<std::sync::atomic::AtomicBool>,
        first_notice: &'static str,
    ) -> SignalWatch {
        use std::sync::atomic::Ordering::Relaxed;
        let Ok(mut signals) = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])
        else {
            return SignalWatch(None);
        };
        let handle = signals.handle();
        std::thread::spawn(move || {
            for _ in signals.forever() {
                let again = flag.swap(true, Relaxed);
                if quiet.load(Relaxed) {
                    continue;
                }
                if again {
                    crate::util::term::warning(
                        "still stopping: waiting for the current step to reach a safe point",
                    );
                } else {
                    crate::util::term::warning(first_notice);
                }
            }
        });
        SignalWatch(Some(handle))
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.close();
        }
    }
}
