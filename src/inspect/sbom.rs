//! Software bills of materials from an inspection's package list: SPDX 2.3
//! JSON and CycloneDX 1.5 JSON, each package with its package URL
//! (`pkg:deb/debian/jq@1.6-2.1?arch=amd64&distro=debian-12`,
//! `pkg:rpm/almalinux/bash@5.1.8-9.el9?arch=x86_64&distro=almalinux-9.4`: the
//! purl specification's `deb` and `rpm` types). Written with serde_json: the documents are a
//! few fixed fields and a list; the SPDX and CycloneDX crates model far more
//! than this needs. An inspection whose package database was not read gives
//! no SBOM (an empty one would claim an image with nothing installed).

use serde_json::{Value, json};

use super::{Inspection, Package};

/// Which SBOM format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SbomFormat {
    /// SPDX 2.3, JSON.
    Spdx,
    /// CycloneDX 1.5, JSON.
    Cyclonedx,
}

/// Percent-encodes what a purl version or qualifier may not hold as is.
fn purl_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The package URL of a package of `inspection`'s distro: the purl
/// specification's `deb` type for dpkg, `rpm` for RPM (whose epoch is a
/// qualifier, not part of the version).
pub fn purl(inspection: &Inspection, p: &Package) -> String {
    let rpm = inspection.package_db == "rpm";
    let vendor = match inspection.os.id.as_str() {
        "" if rpm => "rpm",
        "" => "debian",
        id => id,
    };
    let (epoch, version) = match p.version.split_once(':') {
        Some((e, v)) if rpm => (Some(e), v),
        _ => (None, p.version.as_str()),
    };
    let mut q = Vec::new();
    if !p.arch.is_empty() {
        q.push(format!("arch={}", purl_escape(&p.arch)));
    }
    if let Some(e) = epoch {
        q.push(format!("epoch={}", purl_escape(e)));
    }
    if !inspection.os.version_id.is_empty() {
        q.push(format!(
            "distro={}-{}",
            purl_escape(vendor),
            purl_escape(&inspection.os.version_id)
        ));
    }
    format!(
        "pkg:{}/{}/{}@{}{}{}",
        if rpm { "rpm" } else { "deb" },
        purl_escape(&vendor.to_ascii_lowercase()),
        purl_escape(&p.name.to_ascii_lowercase()),
        purl_escape(version),
        if q.is_empty() { "" } else { "?" },
        q.join("&")
    )
}

/// A stable digest of what the SBOM lists: the same image, the same id.
fn digest(inspection: &Inspection) -> String {
    let mut listed = String::new();
    for p in &inspection.packages {
        listed.push_str(&format!("{}\t{}\t{}\n", p.name, p.version, p.arch));
    }
    listed.push_str(&inspection.os.id);
    listed.push_str(&inspection.os.version_id);
    crate::util::text::sha256_hex(listed.as_bytes())
}

pub fn render(
    inspection: &Inspection,
    format: SbomFormat,
    name: &str,
    created: &str,
) -> Result<Value, String> {
    if !inspection.packages_read() {
        return Err(format!(
            "no SBOM: the image's package database was {}",
            inspection.package_db
        ));
    }
    let d = digest(inspection);
    let os_version = format!("{} {}", inspection.os.id, inspection.os.version_id);
    Ok(match format {
        SbomFormat::Spdx => {
            let mut packages = vec![json!({
                "name": name,
                "SPDXID": "SPDXRef-Image",
                "versionInfo": os_version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "primaryPackagePurpose": "OPERATING-SYSTEM",
                "comment": inspection.os.pretty_name,
            })];
            let mut relationships = vec![json!({
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": "SPDXRef-Image",
            })];
            for (i, p) in inspection.packages.iter().enumerate() {
                let id = format!("SPDXRef-Package-{i}");
                packages.push(json!({
                    "name": p.name,
                    "SPDXID": id,
                    "versionInfo": p.version,
                    "downloadLocation": "NOASSERTION",
                    "filesAnalyzed": false,
                    "sourceInfo": format!("built from source package {}", p.source),
                    "externalRefs": [{
                        "referenceCategory": "PACKAGE-MANAGER",
                        "referenceType": "purl",
                        "referenceLocator": purl(inspection, p),
                    }],
                }));
                relationships.push(json!({
                    "spdxElementId": "SPDXRef-Image",
                    "relationshipType": "CONTAINS",
                    "relatedSpdxElement": id,
                }));
            }
            json!({
                "spdxVersion": "SPDX-2.3",
                "dataLicense": "CC0-1.0",
                "SPDXID": "SPDXRef-DOCUMENT",
                "name": name,
                "documentNamespace": format!("https://imgforge.invalid/spdx/{name}-{d}"),
                "creationInfo": {
                    "created": created,
                    "creators": [format!("Tool: imgforge-{}", env!("CARGO_PKG_VERSION"))],
                },
                "packages": packages,
                "relationships": relationships,
            })
        }
        SbomFormat::Cyclonedx => {
            let components: Vec<Value> = inspection
                .packages
                .iter()
                .map(|p| {
                    let purl = purl(inspection, p);
                    json!({
                        "type": "library",
                        "bom-ref": purl,
                        "name": p.name,
                        "version": p.version,
                        "purl": purl,
                    })
                })
                .collect();
            // A name-based UUID from the digest: the same image, the same serial.
            let u = &d[..32];
            let serial = format!(
                "urn:uuid:{}-{}-5{}-8{}-{}",
                &u[0..8],
                &u[8..12],
                &u[13..16],
                &u[17..20],
                &u[20..32]
            );
            json!({
                "bomFormat": "CycloneDX",
                "specVersion": "1.5",
                "serialNumber": serial,
                "version": 1,
                "metadata": {
                    "timestamp": created,
                    "tools": {"components": [{
                        "type": "application",
                        "name": "imgforge",
                        "version": env!("CARGO_PKG_VERSION"),
                    }]},
                    "component": {
                        "type": "operating-system",
                        "bom-ref": "image",
                        "name": name,
                        "version": os_version,
                        "description": inspection.os.pretty_name,
                    },
                },
                "components": components,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_escape_what_the_spec_says() {
        let i = Inspection {
            schema: 1,
            subject: "x".into(),
            os: super::super::OsRelease {
                id: "debian".into(),
                version_id: "12".into(),
                pretty_name: String::new(),
            },
            package_db: "dpkg".into(),
            packages: vec![],
            kernels: vec![],
            units_enabled: vec![],
            users_with_shell: vec![],
            ssh_ports: vec![],
            components: Default::default(),
            etc: Default::default(),
            firewall: Default::default(),
            read: Default::default(),
        };
        let p = Package {
            name: "libstdc++6".into(),
            version: "1:12.2.0-14+deb12u1".into(),
            arch: "amd64".into(),
            source: "gcc-12".into(),
        };
        assert_eq!(
            purl(&i, &p),
            "pkg:deb/debian/libstdc%2B%2B6@1%3A12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12"
        );
        // RPM: the epoch is a qualifier, the version is version-release.
        let mut el = i.clone();
        el.package_db = "rpm".into();
        el.os.id = "almalinux".into();
        el.os.version_id = "9.4".into();
        let p = Package {
            name: "bind-libs".into(),
            version: "32:9.16.23-24.el9_5".into(),
            arch: "x86_64".into(),
            source: "bind".into(),
        };
        assert_eq!(
            purl(&el, &p),
            "pkg:rpm/almalinux/bind-libs@9.16.23-24.el9_5?arch=x86_64&epoch=32&distro=almalinux-9.4"
        );
        let mut none = i.clone();
        none.package_db = "not read: RPM's Berkeley DB".into();
        assert!(render(&none, SbomFormat::Spdx, "x", "2026-12-03T00:00:00Z").is_err());
    }
}
