//! Check reports shared by `validate` and `pool check`: stable ids, a status,
//! the evidence, a hint; printed for people, as JSON, or as JUnit XML.

use std::fmt::Write as _;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Skip,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable across releases; pipelines may key on it.
    pub id: String,
    pub status: Status,
    pub message: String,
    /// Where the evidence is: `path:line`, a blob URL, a file inside an image.
    pub evidence: Option<String>,
    pub hint: Option<String>,
}

impl Finding {
    pub fn new(id: &str, status: Status, message: impl Into<String>) -> Finding {
        Finding {
            id: id.to_string(),
            status,
            message: message.into(),
            evidence: None,
            hint: None,
        }
    }

    pub fn pass(id: &str, message: impl Into<String>) -> Finding {
        Finding::new(id, Status::Pass, message)
    }

    pub fn fail(id: &str, message: impl Into<String>) -> Finding {
        Finding::new(id, Status::Fail, message)
    }

    pub fn warn(id: &str, message: impl Into<String>) -> Finding {
        Finding::new(id, Status::Warn, message)
    }

    pub fn skip(id: &str, message: impl Into<String>) -> Finding {
        Finding::new(id, Status::Skip, message)
    }

    pub fn evidence(mut self, evidence: impl Into<String>) -> Finding {
        self.evidence = Some(evidence.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Finding {
        self.hint = Some(hint.into());
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was checked: a file, a blob URL, a pool config.
    pub subject: String,
    pub summary: Summary,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn new(subject: impl Into<String>, findings: Vec<Finding>) -> Report {
        let count = |s| findings.iter().filter(|f| f.status == s).count();
        Report {
            subject: subject.into(),
            summary: Summary {
                pass: count(Status::Pass),
                warn: count(Status::Warn),
                fail: count(Status::Fail),
                skip: count(Status::Skip),
            },
            findings,
        }
    }

    pub fn failed(&self) -> bool {
        self.summary.fail > 0
    }

    /// The failed findings, in report order.
    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.status == Status::Fail)
    }

    /// The ids of the failed checks (`failed_checks` in every summary).
    pub fn failed_ids(&self) -> Vec<String> {
        self.failures().map(|f| f.id.clone()).collect()
    }

    pub fn to_text(&self, color: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.subject);
        for f in &self.findings {
            let (label, code) = match f.status {
                Status::Pass => ("pass", "32"),
                Status::Warn => ("warn", "33"),
                Status::Fail => ("FAIL", "1;31"),
                Status::Skip => ("skip", "2"),
            };
            let label = crate::util::term::paint(code, label, color);
            let _ = writeln!(s, "  {label}  {:<34} {}", f.id, f.message);
            match &f.evidence {
                // Lines seen in a booted node (its journal, lsblk): shown
                // where the row did not pass; always in the JSON.
                Some(e) if e.contains('\n') && f.status != Status::Pass => {
                    for line in e.lines() {
                        let _ = writeln!(s, "        {:<34} | {line}", "");
                    }
                }
                Some(e) if e.contains('\n') => {}
                Some(e) => {
                    let _ = writeln!(s, "        {:<34} at {e}", "");
                }
                None => {}
            }
            if f.status != Status::Pass
                && let Some(h) = &f.hint
            {
                let _ = writeln!(s, "        {:<34} hint: {h}", "");
            }
        }
        let m = &self.summary;
        let _ = writeln!(
            s,
            "{} passed, {} failed, {} warnings, {} skipped",
            m.pass, m.fail, m.warn, m.skip
        );
        s
    }

    /// JUnit XML: one test case per finding; skip and warn are skipped cases.
    pub fn to_junit(&self, suite: &str) -> String {
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            s,
            "<testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
            xml(suite),
            self.findings.len(),
            self.summary.fail,
            self.summary.skip + self.summary.warn
        );
        for f in &self.findings {
            let _ = write!(
                s,
                "  <testcase classname=\"{}\" name=\"{}\"",
                xml(&self.subject),
                xml(&f.id)
            );
            let detail = format!(
                "{}{}{}",
                f.message,
                f.evidence
                    .as_ref()
                    .map(|e| format!(" (at {e})"))
                    .unwrap_or_default(),
                f.hint
                    .as_ref()
                    .map(|h| format!("; hint: {h}"))
                    .unwrap_or_default()
            );
            match f.status {
                Status::Pass => s.push_str("/>\n"),
                Status::Fail => {
                    let _ = writeln!(
                        s,
                        ">\n    <failure message=\"{}\"/>\n  </testcase>",
                        xml(&detail)
                    );
                }
                Status::Warn | Status::Skip => {
                    let _ = writeln!(
                        s,
                        ">\n    <skipped message=\"{}\"/>\n  </testcase>",
                        xml(&detail)
                    );
                }
            }
        }
        s.push_str("</testsuite>\n");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_and_junit_escapes() {
        let r = Report::new(
            "pool.yaml",
            vec![
                Finding::pass("a", "ok"),
                Finding::fail("b", "bad <uri> & \"x\"").hint("fix"),
                Finding::skip("c", "offline"),
            ],
        );
        assert!(r.failed());
        assert_eq!((r.summary.pass, r.summary.fail, r.summary.skip), (1, 1, 1));
        let x = r.to_junit("imgforge");
        assert!(x.contains("failures=\"1\""));
        assert!(x.contains("bad &lt;uri&gt; &amp; &quot;x&quot;"));
        assert!(
            r.to_text(false)
                .contains("1 passed, 1 failed, 0 warnings, 1 skipped")
        );
    }
}
