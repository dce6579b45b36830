//! `--image PATH`: image files read for a prompt, typed by their extension and sent in base64.
//! The daemon checks what the model takes; this refuses only what it cannot even send.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use crush_protocol::ImageInput;

use crate::usage;

/// The daemon's limit per image (decoded), checked here before a large file is read and sent.
const MAX_IMAGE_BYTES: u64 = 5 * 1024 * 1024;

/// Reads each file as an image for `agent/send`.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<ImageInput>> {
    paths.iter().map(|p| load_one(p)).collect()
}

fn load_one(path: &Path) -> anyhow::Result<ImageInput> {
    let mime = mime_of(path).ok_or_else(|| {
        usage(format!(
            "--image {}: not a .png, .jpg, .jpeg, .gif or .webp file",
            path.display()
        ))
    })?;
    let size = std::fs::metadata(path)
        .map_err(|e| usage(format!("--image {}: {e}", path.display())))?
        .len();
    if size > MAX_IMAGE_BYTES {
        return Err(usage(format!(
            "--image {}: {size} bytes; at most {MAX_IMAGE_BYTES}",
            path.display()
        )));
    }
    let bytes =
        std::fs::read(path).map_err(|e| usage(format!("--image {}: {e}", path.display())))?;
    Ok(ImageInput {
        mime_type: mime.to_owned(),
        data: base64::engine::general_purpose::STANDARD.encode(bytes),
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
    })
}

fn mime_of(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn types_come_from_the_extension() {
        assert_eq!(mime_of(Path::new("a/shot.PNG")), Some("image/png"));
        assert_eq!(mime_of(Path::new("x.jpeg")), Some("image/jpeg"));
        assert_eq!(mime_of(Path::new("x.svg")), None);
        assert_eq!(mime_of(Path::new("noext")), None);
    }

    #[test]
    fn a_file_is_read_as_base64_with_its_name() {
        let dir = std::env::temp_dir().join(format!("crushctl-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("dot.gif");
        std::fs::write(&p, [1u8, 2, 3]).unwrap();
        let i = load(std::slice::from_ref(&p)).unwrap().remove(0);
        assert_eq!(i.mime_type, "image/gif");
        assert_eq!(i.data, "AQID");
        assert_eq!(i.name.as_deref(), Some("dot.gif"));
        assert!(load(&[dir.join("missing.png")]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
