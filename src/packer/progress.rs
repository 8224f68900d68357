//! What a person sees while Packer runs: steps with elapsed time, cargo style.
//! Provisioner output is shown whole with --verbose, and whenever stderr is
//! not a terminal (a CI log must show what happened: a pipeline has no
//! self-overwriting line to look at); on a terminal without --verbose only its
//! latest line, on one self-overwriting line.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::packer::Progress;
use crate::packer::events::{Event, UiLevel};

pub struct Display {
    verbose: bool,
    started: Instant,
    tty: bool,
    color: bool,
    transient: bool,
    last_step: String,
    /// The provisioner script running now (its `==> imgforge SCRIPT:` lines,
    /// or Packer's "Provisioning with shell script: …").
    script: Option<String>,
    on_azure: bool,
    /// Error lines shown so far (bounded), so Packer's recap is not shown twice.
    errors_shown: std::collections::VecDeque<String>,
    /// Its latest output lines, for the error when it fails.
    tail: std::collections::VecDeque<String>,
    /// Packer has started summing up a failure: nothing more is a script's.
    frozen: bool,
    /// The script's error output (stderr reaches Packer on its own channel,
    /// so it may be older than the last lines of stdout): kept apart so the
    /// error always shows it.
    stderr_tail: std::collections::VecDeque<String>,
}

/// A provisioner line as the script wrote it: Packer's `    null: ` (output)
/// or `==> null: ` (step, stderr) prefix removed.
fn without_builder_prefix(line: &str) -> &str {
    let strip = |rest: &str| -> Option<usize> {
        let (name, _) = rest.split_once(": ")?;
        (!name.is_empty() && !name.contains(char::is_whitespace)).then_some(name.len() + 2)
    };
    if let Some(rest) = line.strip_prefix("==> ")
        && let Some(n) = strip(rest)
    {
        return &rest[n..];
    }
    if let Some(rest) = line.strip_prefix("    ")
        && let Some(n) = strip(rest)
    {
        return &rest[n..];
    }
    line
}

/// How many of a failing script's last stderr lines the error always shows.
pub const STDERR_LINES: usize = 10;

/// The latest `cap` lines: the oldest goes when a new one comes.
fn push_capped(lines: &mut std::collections::VecDeque<String>, line: String, cap: usize) {
    if lines.len() == cap {
        lines.pop_front();
    }
    lines.push_back(line);
}

/// How many of a failing script's last lines the error shows.
pub const TAIL_LINES: usize = 30;

impl Display {
    /// `on_azure`: Packer's cleanup deletes Azure resources (azure-arm), not
    /// a local build's mounts and work files; the cancel lines say which.
    pub fn new(verbose: bool, started: Instant, on_azure: bool) -> Display {
        let tty = std::io::stderr().is_terminal();
        Display {
            on_azure,
            errors_shown: std::collections::VecDeque::new(),
            verbose,
            started,
            tty,
            color: crate::util::term::color_enabled(tty),
            transient: false,
            last_step: String::new(),
            script: None,
            tail: std::collections::VecDeque::new(),
            frozen: false,
            stderr_tail: std::collections::VecDeque::new(),
        }
    }

    fn stamp(&self) -> String {
        format!("[{:>5}s]", self.started.elapsed().as_secs())
    }

    fn line(&mut self, text: &str) {
        if crate::util::term::quiet() {
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
        if crate::util::term::quiet() {
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

    /// Follows which script runs and keeps its last lines.
    fn remember(&mut self, text: &str, is_error: bool) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let line = line.trim_end();
            // From here on Packer sums up the failure (its own lines, which
            // the error prints anyway): the script's last lines are complete.
            const SUMMARY: [&str; 4] = [
                "Provisioning step had errors",
                "errored after",
                "Some builds didn't complete",
                "Builds finished",
            ];
            let summary = SUMMARY.iter().any(|s| line.contains(s));
            if summary {
                self.frozen = true;
            }
            if self.frozen {
                // The script's stderr is copied by its own goroutine and can
                // reach Packer's output after the summary began (seen on a
                // loaded CI machine): kept with its error output. Packer's
                // recap (the summary, `--> builder: …`) is not the script's.
                let late = without_builder_prefix(line);
                if is_error
                    && !summary
                    && !line.trim_start().starts_with("-->")
                    && !self.stderr_tail.iter().any(|l| l == late)
                {
                    push_capped(&mut self.stderr_tail, late.to_string(), STDERR_LINES);
                }
                continue;
            }
            let marked = line
                .split_once("==> imgforge ")
                .and_then(|(_, rest)| rest.split_once(": "))
                .map(|(script, _)| script.to_string());
            let marker = marked.is_some();
            let named = marked.or_else(|| {
                line.split_once("Provisioning with shell script: ")
                    .or_else(|| line.split_once("Running local shell script: "))
                    .map(|(_, p)| p.trim().to_string())
            });
            if let Some(script) = named
                && self.script.as_deref() != Some(script.as_str())
            {
                self.script = Some(script);
                self.tail.clear();
                // A new provisioner process starts its error output afresh.
                // An imgforge marker does not: scripts under one process share
                // its stderr, which Packer copies apart from stdout, so an
                // error line can arrive before the marker of the script that
                // wrote it (seen on a loaded CI machine).
                if !marker {
                    self.stderr_tail.clear();
                }
            }
            let line = without_builder_prefix(line).to_string();
            if is_error {
                push_capped(&mut self.stderr_tail, line.clone(), STDERR_LINES);
            }
            push_capped(&mut self.tail, line, TAIL_LINES);
        }
    }

    /// The provisioner script that ran last (a failed build's culprit).
    pub fn failed_script(&self) -> Option<&str> {
        self.script.as_deref()
    }

    /// "in SCRIPT, whose last lines were: …", for a failed build's error.
    pub fn failure_context(&self) -> Option<String> {
        let script = self.script.as_ref()?;
        let mut out = format!(
            "\n  the last script to run was {script}; its last {} line(s):",
            self.tail.len()
        );
        for l in &self.tail {
            out.push_str("\n    | ");
            out.push_str(l);
        }
        let older: Vec<&String> = self
            .stderr_tail
            .iter()
            .filter(|l| !self.tail.contains(l))
            .collect();
        if !older.is_empty() {
            out.push_str("\n  and its error output before those:");
            for l in older {
                out.push_str("\n    ! ");
                out.push_str(l);
            }
        }
        Some(out)
    }

    pub fn show(&mut self, p: Progress<'_>) {
        match p {
            Progress::Event(Event::Ui { level, text }) => match level {
                UiLevel::Say => {
                    self.remember(text, false);
                    self.last_step = text.trim().to_string();
                    let l = format!("{} {}", self.stamp(), text.trim_end());
                    self.line(&l);
                }
                UiLevel::Message => {
                    self.remember(text, false);
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
                    self.remember(text, true);
                    for part in text.lines().filter(|l| !l.trim().is_empty()) {
                        // Packer's closing recap (`--> BUILDER: MESSAGE`)
                        // repeats an error already shown: once is enough.
                        let message = part.trim().split_once(": ").map(|(_, m)| m.to_string());
                        let recap = part.contains("Some builds didn't complete successfully");
                        if recap
                            || (part.trim_start().starts_with("--> ")
                                && message.as_ref().is_some_and(|m| {
                                    self.errors_shown.iter().any(|e| e.ends_with(m.as_str()))
                                }))
                        {
                            continue;
                        }
                        push_capped(
                            &mut self.errors_shown,
                            part.trim().to_string(),
                            STDERR_LINES,
                        );
                        let prefix = crate::util::term::paint("31", "!", self.color);
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
                    "{} cancelling: interrupt forwarded to Packer; waiting for it to clean up ({})",
                    self.stamp(),
                    if self.on_azure {
                        "it deletes the Azure resources it created"
                    } else {
                        "the local build's scripts stop; its work files are removed after"
                    }
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
                     abandon it, so {}",
                    self.stamp(),
                    if self.on_azure {
                        "no Azure VM is left running"
                    } else {
                        "no process or mount is left behind"
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(lines: &[(&str, bool)]) -> String {
        let mut d = Display::new(false, Instant::now(), true);
        for (text, is_error) in lines {
            d.remember(text, *is_error);
        }
        d.failure_context().unwrap_or_default()
    }

    #[test]
    fn a_scripts_error_line_that_overtakes_its_first_output_line_is_still_shown() {
        // One process printed both markers and 40 lines, then the error;
        // stderr reached Packer first, before even the previous script's
        // last line.
        let mut lines: Vec<(String, bool)> = vec![
            ("==> imgforge 20-docker.sh: installing Docker".into(), false),
            ("    null: docker done".into(), false),
            (
                "==> null: E: Unable to locate package nvidia-driver-999".into(),
                true,
            ),
            (
                "==> imgforge 30-gpu.sh: installing the NVIDIA driver".into(),
                false,
            ),
        ];
        lines.extend((1..=40).map(|i| (format!("    null: apt line {i}"), false)));
        let lines: Vec<(&str, bool)> = lines.iter().map(|(l, e)| (l.as_str(), *e)).collect();
        let c = fed(&lines);
        assert!(
            c.contains("was 30-gpu.sh") && c.contains("| apt line 40"),
            "{c}"
        );
        assert!(
            c.contains("! E: Unable to locate package nvidia-driver-999"),
            "{c}"
        );
        assert!(!c.contains("docker done"), "{c}");
        // A new provisioner process starts afresh.
        let c = fed(&[
            ("==> null: Provisioning with shell script: /tmp/a.sh", false),
            ("==> null: W: an earlier script's warning", true),
            ("==> null: Provisioning with shell script: /tmp/b.sh", false),
            ("    null: b line", false),
        ]);
        assert!(c.contains("was /tmp/b.sh") && !c.contains("warning"), "{c}");
    }

    #[test]
    fn a_scripts_error_line_that_arrives_after_packers_summary_is_still_shown() {
        let mut lines: Vec<(String, bool)> = vec![(
            "==> imgforge 30-gpu.sh: installing the NVIDIA driver".into(),
            false,
        )];
        lines.extend((1..=40).map(|i| (format!("    null: apt line {i}"), false)));
        lines.push(("Build 'null' errored after 43 milliseconds: Script exited with non-zero exit status: 100".into(), true));
        // Late: the script's stderr, after Packer began its recap.
        lines.push((
            "==> null: E: Unable to locate package nvidia-driver-999".into(),
            true,
        ));
        lines.push((
            "==> Some builds didn't complete successfully and had errors:".into(),
            true,
        ));
        lines.push((
            "--> null: Script exited with non-zero exit status: 100".into(),
            true,
        ));
        let lines: Vec<(&str, bool)> = lines.iter().map(|(l, e)| (l.as_str(), *e)).collect();
        let c = fed(&lines);
        assert!(
            c.contains("its last 30 line(s)") && c.contains("| apt line 40"),
            "{c}"
        );
        assert!(
            c.contains("! E: Unable to locate package nvidia-driver-999"),
            "{c}"
        );
        // Packer's own recap is not the script's output.
        assert!(
            !c.contains("Script exited") && !c.contains("Some builds"),
            "{c}"
        );
    }
}
