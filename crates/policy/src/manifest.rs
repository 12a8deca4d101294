//! Manifest bodies: which kind of manifest a push carries, and how many layer bytes it names.
//!
//! The registry decides how to parse a manifest from the request's `Content-Type` (distribution's
//! `UnmarshalManifest`), not from the body. So do we, so that a body is never measured as another
//! type than the one the registry stores it as:
//!
//! - `Content-Type` is compared without parameters and without regard to letter case.
//! - A body whose `mediaType` names another type than `Content-Type` is refused (the OCI spec says
//!   they must match, and distribution v3 refuses the mismatch too).
//! - A missing `Content-Type` is refused: distribution v3 refuses it, and v2.8 would parse the
//!   body as schema 1, which we cannot measure.
//! - An unknown `Content-Type` is refused as a manifest we cannot measure.

mod golang;

pub use self::golang::KeyProblem;

use self::golang::{Json, Number, Object};

/// Manifest media types the gateway knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaType {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerManifestList,
    DockerSchema1,
    DockerSchema1Signed,
    /// `application/vnd.oci.artifact.manifest.v1+json`, only in image-spec 1.1 release candidates.
    OciArtifactManifest,
}

impl MediaType {
    /// The registered name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OciManifest => "application/vnd.oci.image.manifest.v1+json",
            Self::OciIndex => "application/vnd.oci.image.index.v1+json",
            Self::DockerManifest => "application/vnd.docker.distribution.manifest.v2+json",
            Self::DockerManifestList => "application/vnd.docker.distribution.manifest.list.v2+json",
            Self::DockerSchema1 => "application/vnd.docker.distribution.manifest.v1+json",
            Self::DockerSchema1Signed => {
                "application/vnd.docker.distribution.manifest.v1+prettyjws"
            }
            Self::OciArtifactManifest => "application/vnd.oci.artifact.manifest.v1+json",
        }
    }

    const ALL: [Self; 7] = [
        Self::OciManifest,
        Self::OciIndex,
        Self::DockerManifest,
        Self::DockerManifestList,
        Self::DockerSchema1,
        Self::DockerSchema1Signed,
        Self::OciArtifactManifest,
    ];

    /// Parses a `Content-Type` header value: parameters are dropped and case is ignored.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or_default().trim();
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(essence))
    }
}

/// What a manifest body holds, as far as limits are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Measured {
    /// An image or artifact manifest: its layers and their summed size.
    Image {
        media_type: MediaType,
        layers: usize,
        layer_bytes: u64,
    },
    /// An index or manifest list: no layers of its own; each child is checked when pushed.
    Index {
        media_type: MediaType,
        children: usize,
    },
}

impl Measured {
    /// The bytes that count against `max_image_size`.
    pub fn image_bytes(&self) -> u64 {
        match self {
            Self::Image { layer_bytes, .. } => *layer_bytes,
            Self::Index { .. } => 0,
        }
    }

    /// The manifest's media type.
    pub fn media_type(&self) -> MediaType {
        match self {
            Self::Image { media_type, .. } | Self::Index { media_type, .. } => *media_type,
        }
    }
}

/// Why a manifest could not be measured. All of these are `MANIFEST_INVALID` to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "the request has no Content-Type; send the manifest's media type (for example application/vnd.oci.image.manifest.v1+json)"
    )]
    MissingContentType,
    #[error(
        "Content-Type `{0}` is not a manifest type this registry gateway can measure; push an OCI image manifest or index, or a Docker schema 2 manifest or manifest list"
    )]
    UnknownContentType(String),
    #[error(
        "Docker schema 1 manifests carry no layer sizes and are not accepted; push the image as Docker schema 2 or OCI instead (for example `skopeo copy --format v2s2` or `--format oci`)"
    )]
    Schema1,
    #[error(
        "application/vnd.oci.artifact.manifest.v1+json was dropped from the OCI image spec before 1.1; push the artifact as an OCI image manifest with an artifactType instead"
    )]
    LegacyArtifact,
    #[error("Content-Type says {header} but the manifest's mediaType is {body}; they must match")]
    MediaTypeMismatch { header: String, body: String },
    #[error("the manifest is not valid JSON for {media_type}: {reason}")]
    Malformed {
        media_type: &'static str,
        reason: String,
    },
    /// A key the registry would read into another field than we do, or a field given twice.
    #[error("{0}")]
    Key(KeyProblem),
    #[error(
        "the sizes of the layers add up to more than 2^63-1 bytes; the manifest cannot be right"
    )]
    SizeOverflow,
}

/// Fields of an image manifest (OCI and Docker schema 2) as the registry's structs name them.
const IMAGE_FIELDS: [&str; 7] = [
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "subject",
    "annotations",
];
/// Fields of an index or manifest list.
const INDEX_FIELDS: [&str; 6] = [
    "schemaVersion",
    "mediaType",
    "artifactType",
    "manifests",
    "subject",
    "annotations",
];
/// Fields of a descriptor (a layer, the config, a subject, an index entry).
const DESCRIPTOR_FIELDS: [&str; 8] = [
    "mediaType",
    "artifactType",
    "digest",
    "size",
    "urls",
    "annotations",
    "data",
    "platform",
];

/// Measures a manifest body, given the request's `Content-Type` header.
pub fn measure(content_type: Option<&str>, body: &[u8]) -> Result<Measured, ManifestError> {
    let header = content_type
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(ManifestError::MissingContentType)?;
    let media_type = MediaType::from_content_type(header)
        .ok_or_else(|| ManifestError::UnknownContentType(header.to_owned()))?;
    let malformed = |reason: String| ManifestError::Malformed {
        media_type: media_type.as_str(),
        reason,
    };
    let (list_field, fields): (&'static str, &[&'static str]) = match media_type {
        MediaType::DockerSchema1 | MediaType::DockerSchema1Signed => {
            return Err(ManifestError::Schema1);
        }
        MediaType::OciArtifactManifest => return Err(ManifestError::LegacyArtifact),
        MediaType::OciManifest | MediaType::DockerManifest => ("layers", &IMAGE_FIELDS),
        MediaType::OciIndex | MediaType::DockerManifestList => ("manifests", &INDEX_FIELDS),
    };
    let json: Json = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    let Json::Object(members) = &json else {
        return Err(malformed(format!(
            "the manifest is {}, not an object",
            json.kind()
        )));
    };
    let top = Object::new(members, "");
    top.check(fields).map_err(ManifestError::Key)?;
    let body_type = match top.get("mediaType").map_err(ManifestError::Key)? {
        // Go leaves a null string empty: the same as no `mediaType`.
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(malformed(format!(
                "mediaType is {}, not a string",
                other.kind()
            )));
        }
    };
    check_body_type(media_type, body_type)?;
    let entries = match top.get(list_field).map_err(ManifestError::Key)? {
        Some(Json::Array(entries)) => entries,
        Some(other) => {
            return Err(malformed(format!(
                "{list_field} is {}, not an array",
                other.kind()
            )));
        }
        None => return Err(malformed(format!("missing field `{list_field}`"))),
    };
    for name in ["config", "subject"] {
        if let Some(Json::Object(members)) = top.get(name).map_err(ManifestError::Key)? {
            Object::new(members, name)
                .check(&DESCRIPTOR_FIELDS)
                .map_err(ManifestError::Key)?;
        }
    }
    let mut total: u64 = 0;
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{list_field}[{i}]");
        let Json::Object(members) = entry else {
            return Err(malformed(format!(
                "{at} is {}, not an object",
                entry.kind()
            )));
        };
        let descriptor = Object::new(members, &at);
        descriptor
            .check(&DESCRIPTOR_FIELDS)
            .map_err(ManifestError::Key)?;
        let size = match descriptor.get("size").map_err(ManifestError::Key)? {
            Some(Json::Number(Number::Unsigned(n))) => *n,
            Some(Json::Number(Number::Signed(_))) => {
                return Err(malformed(format!("{at}.size is negative")));
            }
            Some(Json::Number(Number::Float(_))) => {
                return Err(malformed(format!(
                    "{at}.size is not a whole number (every size must be a whole number of bytes from 0 to 9223372036854775807)"
                )));
            }
            Some(other) => {
                return Err(malformed(format!(
                    "{at}.size is {}, not a number",
                    other.kind()
                )));
            }
            None => return Err(malformed(format!("{at} has no size"))),
        };
        if list_field != "layers" {
            // An index entry's size is the child manifest's, not image bytes.
            continue;
        }
        total = total
            .checked_add(size)
            .filter(|t| *t <= super::size::MAX_BYTES)
            .ok_or(ManifestError::SizeOverflow)?;
    }
    Ok(match media_type {
        MediaType::OciIndex | MediaType::DockerManifestList => Measured::Index {
            media_type,
            children: entries.len(),
        },
        _ => Measured::Image {
            media_type,
            layers: entries.len(),
            layer_bytes: total,
        },
    })
}

fn check_body_type(header: MediaType, body: Option<&str>) -> Result<(), ManifestError> {
    match body {
        // OCI makes `mediaType` optional in the body; the header then decides.
        None => Ok(()),
        Some(body) if body == header.as_str() => Ok(()),
        Some(body) => Err(ManifestError::MediaTypeMismatch {
            header: header.as_str().to_owned(),
            body: body.to_owned(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests;
