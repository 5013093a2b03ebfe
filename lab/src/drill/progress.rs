//! Live progress of the drill on stderr (stdout stays for the result, so `--json` output is one
//! clean document): one line per step, prefixed with the seconds since the start, and a
//! spinner with a running clock while waiting when stderr is a terminal. Plain lines otherwise.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Where progress goes.
#[derive(Debug, Clone)]
pub struct Progress {
    start: Instant,
    tty: bool,
    quiet: bool,
}

impl Progress {
    /// Progress on stderr; `quiet` prints nothing.
    pub fn new(quiet: bool) -> Self {
        Self {
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            quiet,
        }
    }

    /// Seconds since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// One line.
    pub fn line(&self, msg: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "[{:6.1}s] {}",
            self.start.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }

    /// Runs `fut`, showing `msg` with a spinner and a clock while it runs (a plain line first
    /// when not on a terminal), and the time it took when it is done.
    pub async fn wait<F: Future>(&self, msg: &str, fut: F) -> F::Output {
        if self.quiet {
            return fut.await;
        }
        let began = Instant::now();
        if !self.tty {
            self.line(format!("{msg} ..."));
            let out = fut.await;
            self.line(format!(
                "{msg}: done in {:.1} s",
                began.elapsed().as_secs_f64()
            ));
            return out;
        }
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut frame = 0usize;
        let out = loop {
            tokio::select! {
                out = &mut fut => break out,
                _ = tick.tick() => {
                    frame = (frame + 1) % FRAMES.len();
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r\x1b[2K[{:6.1}s] {} {msg} ({:.1} s)",
                        self.start.elapsed().as_secs_f64(),
                        FRAMES[frame],
                        began.elapsed().as_secs_f64()
                    );
                    let _ = err.flush();
                }
            }
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        drop(err);
        self.line(format!(
            "{msg}: done in {:.1} s",
            began.elapsed().as_secs_f64()
        ));
        out
    }
}
