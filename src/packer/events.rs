//! Packer's `-machine-readable` lines as typed events.
//!
//! Each line is `timestamp,target,type,data...`. Commas inside data are written
//! as `%!(PACKER_COMMA)` and newlines as a literal `\n`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UiLevel {
    /// A build step ("==> azure-arm: Creating resource group ...").
    Say,
    /// Provisioner stdout and other detail.
    Message,
    /// Provisioner stderr and errors.
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Ui {
        level: UiLevel,
        text: String,
    },
    ArtifactCount {
        target: String,
        count: usize,
    },
    /// One field of one artifact: `artifact,INDEX,FIELD,VALUES...`.
    Artifact {
        target: String,
        index: usize,
        field: String,
        values: Vec<String>,
    },
    ErrorCount {
        count: usize,
    },
    Other {
        target: String,
        kind: String,
        data: Vec<String>,
    },
}

pub fn unescape(field: &str) -> String {
    field
        .replace("%!(PACKER_COMMA)", ",")
        .replace("\\n", "\n")
        .replace("\\r", "\r")
}

/// Parses one machine-readable line; `None` for a line that is not one.
pub fn parse_line(line: &str) -> Option<Event> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut fields = line.split(',');
    let timestamp = fields.next()?;
    if timestamp.is_empty() || !timestamp.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let target = fields.next()?.to_string();
    let kind = fields.next()?.to_string();
    let data: Vec<String> = fields.map(unescape).collect();
    let event = match kind.as_str() {
        "ui" => {
            let level = match data.first().map(String::as_str) {
                Some("say") => UiLevel::Say,
                Some("message") => UiLevel::Message,
                Some("error") => UiLevel::Error,
                _ => {
                    return Some(Event::Other { target, kind, data });
                }
            };
            Event::Ui {
                level,
                text: data[1..].join(","),
            }
        }
        "artifact-count" => Event::ArtifactCount {
            target,
            count: data.first()?.parse().ok()?,
        },
        "artifact" => Event::Artifact {
            target,
            index: data.first()?.parse().ok()?,
            field: data.get(1)?.clone(),
            values: data[2..].to_vec(),
        },
        "error-count" => Event::ErrorCount {
            count: data.first()?.parse().ok()?,
        },
        _ => Event::Other { target, kind, data },
    };
    Some(event)
}

/// One artifact as Packer reported it, before imgforge interprets it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RawArtifact {
    pub target: String,
    pub builder_id: String,
    pub id: String,
    pub string: String,
    pub files: Vec<String>,
}

/// Collects artifact fields as they stream in. Packer writes all fields of one
/// artifact, then `end`, before the next; so a change of (target, index) starts
/// a new artifact.
#[derive(Debug, Default)]
pub struct ArtifactCollector {
    artifacts: Vec<RawArtifact>,
    current: Option<(String, usize)>,
}

impl ArtifactCollector {
    pub fn observe(&mut self, event: &Event) {
        let Event::Artifact {
            target,
            index,
            field,
            values,
        } = event
        else {
            return;
        };
        let key = (target.clone(), *index);
        if self.current.as_ref() != Some(&key) || self.artifacts.is_empty() {
            self.artifacts.push(RawArtifact {
                target: target.clone(),
                ..RawArtifact::default()
            });
            self.current = Some(key);
        }
        let a = self.artifacts.last_mut().expect("pushed above");
        let first = values.first().cloned().unwrap_or_default();
        match field.as_str() {
            "builder-id" => a.builder_id = first,
            "id" => a.id = first,
            "string" => a.string = values.join(","),
            "file" => a.files.push(values.get(1).cloned().unwrap_or_default()),
            // The next artifact may reuse this index (post-processor output).
            "end" => self.current = None,
            _ => {}
        }
    }

    pub fn into_artifacts(self) -> Vec<RawArtifact> {
        self.artifacts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_commas_and_newlines() {
        let e = parse_line("1606900000,,ui,say,a%!(PACKER_COMMA) b\\nc").unwrap();
        assert_eq!(
            e,
            Event::Ui {
                level: UiLevel::Say,
                text: "a, b\nc".into()
            }
        );
        assert_eq!(parse_line("not a packer line"), None);
    }

    #[test]
    fn collects_consecutive_fields_into_artifacts() {
        let lines = [
            "1,null,artifact-count,1",
            "1,null,artifact,0,builder-id,packer.file",
            "1,null,artifact,0,id,File",
            "1,null,artifact,0,string,Stored file: disk.vhd",
            "1,null,artifact,0,files-count,1",
            "1,null,artifact,0,file,0,disk.vhd",
            "1,null,artifact,0,end",
            "1,null,artifact,0,builder-id,packer.post-processor.manifest",
            "1,null,artifact,0,file,0,packer-manifest.json",
            "1,null,artifact,0,end",
        ];
        let mut c = ArtifactCollector::default();
        for l in lines {
            c.observe(&parse_line(l).unwrap());
        }
        let a = c.into_artifacts();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].builder_id, "packer.file");
        assert_eq!(a[0].files, vec!["disk.vhd".to_string()]);
        assert_eq!(a[1].builder_id, "packer.post-processor.manifest");
    }
}
