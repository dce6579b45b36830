//! Images sent with a prompt: what `agent/send` accepts (the types and sizes every provider
//! takes, valid base64, a model that reads images). Checked before the run is accepted, so a
//! prompt the model could never be shown is refused with a reason instead of failing later.

use crush_protocol::{ImageInput, ModelInfo, RpcError};

use crate::model::Image;
use crate::model::image::{MAX_IMAGE_BYTES, MAX_IMAGES, decoded_len};

/// Refuses images a model could not be shown, naming the first problem.
pub(super) fn check(images: &[ImageInput], model: &ModelInfo) -> Result<(), RpcError> {
    if images.is_empty() {
        return Ok(());
    }
    if !model.images {
        return Err(RpcError::invalid_params(format!(
            "invalid params: images: the model {} does not accept images (if it does, set \
             `images = true` in its [providers.{}.models.\"{}\"] table)",
            model.name, model.provider, model.model
        )));
    }
    if images.len() > MAX_IMAGES {
        return Err(RpcError::invalid_params(format!(
            "invalid params: images: {} images; at most {MAX_IMAGES} per prompt",
            images.len()
        )));
    }
    for (i, image) in images.iter().enumerate() {
        if !Image::supported_type(&image.mime_type) {
            return Err(RpcError::invalid_params(format!(
                "invalid params: images[{i}].mimeType: {:?} is not one of {}",
                image.mime_type,
                Image::SUPPORTED_TYPES.join(", ")
            )));
        }
        match decoded_len(&image.data) {
            None => {
                return Err(RpcError::invalid_params(format!(
                    "invalid params: images[{i}].data: not base64 (standard alphabet, padded)"
                )));
            }
            Some(0) => {
                return Err(RpcError::invalid_params(format!(
                    "invalid params: images[{i}].data: empty"
                )));
            }
            Some(n) if n > MAX_IMAGE_BYTES => {
                return Err(RpcError::invalid_params(format!(
                    "invalid params: images[{i}].data: {n} bytes; at most {MAX_IMAGE_BYTES}"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn model(images: bool) -> ModelInfo {
        ModelInfo {
            name: "p/m".into(),
            provider: "p".into(),
            model: "m".into(),
            images,
            ..ModelInfo::default()
        }
    }

    fn png(data: &str) -> ImageInput {
        ImageInput {
            mime_type: "image/png".into(),
            data: data.into(),
            name: None,
        }
    }

    #[test]
    fn refuses_what_no_model_could_be_shown() {
        assert!(check(&[png("AAAA")], &model(true)).is_ok());
        let msg = |r: Result<(), RpcError>| r.unwrap_err().message;
        assert!(msg(check(&[png("AAAA")], &model(false))).contains("does not accept images"));
        assert!(msg(check(&[png("AA")], &model(true))).contains("not base64"));
        let svg = ImageInput {
            mime_type: "image/svg+xml".into(),
            ..png("AAAA")
        };
        assert!(msg(check(&[svg], &model(true))).contains("image/svg+xml"));
        let many = vec![png("AAAA"); MAX_IMAGES + 1];
        assert!(msg(check(&many, &model(true))).contains("at most"));
        let big = png(&"A".repeat((MAX_IMAGE_BYTES / 3 + 1) * 4));
        assert!(msg(check(&[big], &model(true))).contains("bytes"));
    }
}
