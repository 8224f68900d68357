//! User scripts read before anything is built: a script that `bash -n`
//! rejects would fail seconds into a local build and minutes into an Azure
//! one (a VM paid for meanwhile), named by its path inside the image. Here it
//! is refused when the manifest is read, named by the path the manifest
//! gives it, with bash's own line number; shellcheck's findings (where
//! shellcheck is installed) become plan warnings the same way.
//!
//! Both tools run with a deadline and bounded output, on the file in place
//! (no copy); a script whose first line names another interpreter (Python,
//! Perl) is not a shell script and is left alone.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one tool may take on one script.
const DEADLINE: Duration = Duration::from_secs(20);
/// How much of a tool's output is read.
const MAX_OUTPUT: u64 = 64 * 1024;
/// How many shellcheck findings per script are reported.
const MAX_FINDINGS: usize = 20;

/// Whether `bytes` (a script's start) is for a POSIX shell or bash: a `#!`
/// naming sh, bash or dash (directly or through env), or no `#!` at all
/// (Packer's shell provisioner then runs it with /bin/sh).
pub fn is_shell(head: &[u8]) -> bool {
    // NUL bytes: a binary (an ELF program runs as a user script too).
    if head.contains(&0) {
        return false;
    }
    let Some(line) = head.strip_prefix(b"#!") else {
        return true;
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or(b"");
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let mut prog = words.next().unwrap_or("");
    if prog.ends_with("/env") {
        prog = words.find(|w| !w.starts_with('-')).unwrap_or("");
    }
    matches!(
        prog.rsplit('/').next().unwrap_or(""),
        "sh" | "bash" | "dash"
    )
}

/// Runs `cmd` with the deadline; its combined output (bounded) and whether
/// it exited 0. `None` when the tool is missing or overran.
fn run(mut cmd: Command) -> Option<(bool, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(r) = r {
                let _ = r.take(MAX_OUTPUT).read_to_end(&mut out);
            }
            out
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < DEADLINE => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut text = out.join().unwrap_or_default();
    text.extend(err.join().unwrap_or_default());
    Some((
        status.success(),
        String::from_utf8_lossy(&text).into_owned(),
    ))
}

/// Replaces the path a tool printed with the one the manifest gives, and
/// masks secrets: bash quotes the offending line, which a script could share
/// with a build secret.
fn shown_as(text: &str, full: &Path, shown: &str) -> String {
    crate::util::redact::redact(&text.replace(&full.display().to_string(), shown))
}

/// bash's complaint about `full` (named `shown`), when it cannot parse it.
pub fn syntax_error(full: &Path, shown: &str) -> Option<String> {
    let mut head = [0u8; 256];
    let n = std::fs::File::open(full)
        .and_then(|mut f| f.read(&mut head))
        .ok()?;
    if !is_shell(&head[..n]) {
        return None;
    }
    let mut cmd = Command::new("bash");
    cmd.arg("-n").arg(full);
    match run(cmd) {
        Some((false, text)) => {
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(5)
                .map(|l| shown_as(l, full, shown))
                .collect();
            Some(lines.join("; "))
        }
        _ => None,
    }
}

/// shellcheck's warnings and errors for `full` (named `shown`), as
/// `PATH:LINE:COL: level: message [SCnnnn]`; none where shellcheck is absent.
pub fn lint(full: &Path, shown: &str) -> Vec<String> {
    let mut head = [0u8; 256];
    let Ok(n) = std::fs::File::open(full).and_then(|mut f| f.read(&mut head)) else {
        return Vec::new();
    };
    if !is_shell(&head[..n]) {
        return Vec::new();
    }
    let mut cmd = Command::new("shellcheck");
    cmd.args(["-f", "gcc", "-S", "warning"]);
    // No `#!`: Packer runs it with /bin/sh.
    if !head[..n].starts_with(b"#!") {
        cmd.args(["-s", "sh"]);
    }
    cmd.arg(full);
    let Some((_, text)) = run(cmd) else {
        return Vec::new();
    };
    let full_s = full.display().to_string();
    let mut found: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(&full_s))
        .map(|l| shown_as(l, full, shown))
        .collect();
    if found.len() > MAX_FINDINGS {
        let more = found.len() - MAX_FINDINGS;
        found.truncate(MAX_FINDINGS);
        found.push(format!("{shown}: and {more} more shellcheck finding(s)"));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_scripts_are_told_by_their_first_line() {
        assert!(is_shell(b"#!/bin/sh\nset -e\n"));
        assert!(is_shell(b"#!/usr/bin/env bash\n"));
        assert!(is_shell(b"#!/usr/bin/env -S bash -e\n"));
        assert!(is_shell(b"echo no shebang\n"));
        assert!(!is_shell(b"#!/usr/bin/env python3\n"));
        assert!(!is_shell(b"#!/usr/bin/perl -w\n"));
        assert!(!is_shell(b"\x7fELF\x02\x01\x01\x00"));
    }

    #[test]
    fn a_syntax_error_is_named_by_the_manifests_path_and_bashs_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("setup.sh");
        std::fs::write(
            &f,
            "#!/bin/sh\necho one\nif true; then\n  echo two\nfi fi\n",
        )
        .unwrap();
        let e = syntax_error(&f, "site/setup.sh").expect("bash rejects it");
        assert!(e.starts_with("site/setup.sh: line 5: "), "{e}");
        assert!(!e.contains(&dir.path().display().to_string()), "{e}");
        std::fs::write(&f, "#!/bin/sh\necho fine\n").unwrap();
        assert_eq!(syntax_error(&f, "site/setup.sh"), None);
        // Not a shell script: not bash's to judge.
        std::fs::write(&f, "#!/usr/bin/env python3\nif True:\n  print(1)\n").unwrap();
        assert_eq!(syntax_error(&f, "site/setup.sh"), None);
    }
}
