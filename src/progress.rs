//! What a person sees while Packer runs: steps with elapsed time, cargo style.
//! Provisioner output is shown whole with --verbose, and whenever stderr is
//! not a terminal (a CI log must show what happened: a pipeline has no
//! self-overwriting line to look at); on a terminal without --verbose only its
//! latest line, on one self-overwriting line.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::events::{Event, UiLevel};
use crate::packer::Progress;

pub struct Display {
    verbose: bool,
    started: Instant,
    tty: bool,
    color: bool,
    transient: bool,
    last_step: String,
}

impl Display {
    pub fn new(verbose: bool, started: Instant) -> Display {
        let tty = std::io::stderr().is_terminal();
        Display {
            verbose,
            started,
            tty,
            color: crate::term::color_enabled(tty),
            transient: false,
            last_step: String::new(),
        }
    }

    fn stamp(&self) -> String {
        format!("[{:>5}s]", self.started.elapsed().as_secs())
    }

    fn line(&mut self, text: &str) {
        if crate::term::quiet() {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.transient {
            let _ = write!(err, "\r\x1b[K");
            self.transient = false;
        }
        let _ = writeln!(err, "{text}");
    }

    fn transient_line(&mut self, text: &str) {
        if crate::term::quiet() {
            return;
        }
        let width = 100usize;
        let shown: String = text
            .chars()
            .filter(|c| !c.is_control())
            .take(width)
            .collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{} {shown}", self.stamp());
        let _ = err.flush();
        self.transient = true;
    }

    pub fn show(&mut self, p: Progress<'_>) {
        match p {
            Progress::Event(Event::Ui { level, text }) => match level {
                UiLevel::Say => {
                    self.last_step = text.trim().to_string();
                    let l = format!("{} {}", self.stamp(), text.trim_end());
                    self.line(&l);
                }
                UiLevel::Message => {
                    if self.verbose || !self.tty {
                        for part in text.lines() {
                            let l = format!("{}     {}", self.stamp(), part.trim_end());
                            self.line(&l);
                        }
                    } else if self.tty
                        && let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty())
                    {
                        self.transient_line(last.trim());
                    }
                }
                UiLevel::Error => {
                    for part in text.lines().filter(|l| !l.trim().is_empty()) {
                        let prefix = if self.color { "\x1b[31m!\x1b[0m" } else { "!" };
                        let l = format!("{} {prefix} {}", self.stamp(), part.trim_end());
                        self.line(&l);
                    }
                }
            },
            Progress::Event(_) => {}
            Progress::Raw(text) => {
                if self.verbose {
                    let l = format!("{} {}", self.stamp(), text);
                    self.line(&l);
                }
            }
            Progress::Cancelling => {
                let l = format!(
                    "{} cancelling: interrupt forwarded to Packer; waiting for it to clean up \
                     (it deletes the Azure resources it created)",
                    self.stamp()
                );
                self.line(&l);
            }
            Progress::StillCancelling => {
                let step = if self.last_step.is_empty() {
                    "starting"
                } else {
                    self.last_step.as_str()
                };
                let l = format!(
                    "{} still waiting for Packer's cleanup (last step: {step}); imgforge does not \
                     abandon it, so no Azure VM is left running",
                    self.stamp()
                );
                self.line(&l);
            }
        }
    }

    pub fn finish(&mut self) {
        if self.transient {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.transient = false;
        }
    }
}
