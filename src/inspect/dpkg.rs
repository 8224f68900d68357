//! dpkg's status database (`/var/lib/dpkg/status`): RFC 822-style stanzas,
//! one per package dpkg knows. Only packages whose `Status` ends in
//! `installed` are the image's. Written by hand: the format is a few rules
//! (deb822: `Field: value`, continuation lines start with a space, a blank
//! line ends a stanza), and the crates that parse it pull in more than they
//! add. A stanza without `Package` or `Version` is an error with its line.

use super::Package;

pub const STATUS: &str = "/var/lib/dpkg/status";

/// The installed packages, sorted by name and architecture.
pub fn parse(bytes: &[u8]) -> Result<Vec<Package>, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (byte {})", e.valid_up_to()))?;
    let mut out = Vec::new();
    let mut fields: Vec<(&str, &str)> = Vec::new();
    let mut start = 1usize;
    let mut finish = |fields: &mut Vec<(&str, &str)>, start: usize| -> Result<(), String> {
        if fields.is_empty() {
            return Ok(());
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.trim())
        };
        let status = get("Status").unwrap_or("");
        let name = get("Package")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("line {start}: a stanza without Package"))?;
        if status.ends_with(" installed") {
            let version = get("Version")
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("line {start}: package {name} has no Version"))?;
            let source = get("Source")
                .map(|s| s.split_whitespace().next().unwrap_or(name))
                .unwrap_or(name);
            out.push(Package {
                name: name.to_string(),
                version: version.to_string(),
                arch: get("Architecture").unwrap_or("").to_string(),
                source: source.to_string(),
            });
        }
        fields.clear();
        Ok(())
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            finish(&mut fields, start)?;
            start = i + 2;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if fields.is_empty() {
                return Err(format!(
                    "line {}: a continuation line outside a field",
                    i + 1
                ));
            }
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            let shown: String = line.chars().take(60).collect();
            return Err(format!(
                "line {}: `{}` is not `Field: value`",
                i + 1,
                shown.escape_debug()
            ));
        };
        if fields.is_empty() {
            start = i + 1;
        }
        fields.push((k, v));
    }
    finish(&mut fields, start)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_packages_with_their_source() {
        let s = "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13.dfsg-1\nSource: zlib\nDescription: compression\n library\n\nPackage: gone\nStatus: purge ok not-installed\n\nPackage: held\nStatus: hold ok installed\nArchitecture: all\nVersion: 2\n";
        let p = parse(s.as_bytes()).unwrap();
        let got: Vec<(&str, &str, &str)> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.source.as_str()))
            .collect();
        assert_eq!(
            got,
            [("held", "2", "held"), ("zlib1g", "1:1.2.13.dfsg-1", "zlib")]
        );
    }

    #[test]
    fn damage_is_named_by_its_line() {
        for (bad, line) in [
            ("Package: a\nStatus: install ok installed\n", "line 1"),
            (
                "Package: a\nVersion: 1\nStatus: install ok installed\n\nno colon here\n",
                "line 5",
            ),
            ("\n continued\n", "line 2"),
            ("Status: install ok installed\nVersion: 1\n", "line 1"),
        ] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert!(e.contains(line), "{bad:?}: {e}");
        }
        assert!(parse(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }
}
