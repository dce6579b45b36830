//! An image shown to the model (with a prompt or in a tool's result), and the limits every
//! provider accepts: the types both APIs take, a size per image and a count per message.

/// At most this many images per prompt or tool result.
pub(crate) const MAX_IMAGES: usize = 20;
/// At most this many bytes per image, decoded: Anthropic's limit (OpenAI takes more).
pub(crate) const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;

/// An image: its type and its bytes in base64.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Image {
    pub(crate) mime_type: String,
    pub(crate) data: String,
}

impl Image {
    /// The image types both APIs take.
    pub(crate) const SUPPORTED_TYPES: [&str; 4] =
        ["image/png", "image/jpeg", "image/gif", "image/webp"];

    pub(crate) fn supported_type(mime_type: &str) -> bool {
        Self::SUPPORTED_TYPES.contains(&mime_type)
    }

    /// The `data:` URL OpenAI-compatible APIs take.
    pub(crate) fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.mime_type, self.data)
    }
}

/// The decoded length of standard padded base64, or `None` when it is not that.
pub(crate) fn decoded_len(data: &str) -> Option<usize> {
    let b = data.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let body = &b[..b.len() - pad];
    body.iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        .then(|| b.len() / 4 * 3 - pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_lengths() {
        assert_eq!(decoded_len("AAAA"), Some(3));
        assert_eq!(decoded_len("AAA="), Some(2));
        assert_eq!(decoded_len("AA=="), Some(1));
        assert_eq!(decoded_len(""), Some(0));
        assert_eq!(decoded_len("AAA"), None);
        assert_eq!(decoded_len("A==="), None);
        assert_eq!(decoded_len("AA-_"), None);
        assert_eq!(decoded_len("A=AA"), None);
    }
}
