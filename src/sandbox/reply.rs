//! Serializing and signing an answer exactly as the gateway lays it out:
//! `{"<node>":{…},"sign":"…"}`, in the request charset, no trailing newline.
//!
//! The signature covers the node's bytes as sent, so the node is encoded once
//! and those very bytes are both signed and written.

use super::faults::{SignTamper, flip_sign};
use super::gateway::Reply;
use crate::upstream::signing::{PrivateKey, SigningError};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("could not serialize the response node")]
    Json(#[from] serde_json::Error),
    #[error("could not sign the response node")]
    Signing(#[from] SigningError),
}

/// Builds the body; `tamper` breaks the signature on purpose (a fault).
pub fn render(
    reply: &Reply,
    key: &PrivateKey,
    tamper: Option<SignTamper>,
) -> Result<Vec<u8>, RenderError> {
    render_signed_by(reply, key, tamper, None)
}

/// [`render`]; in certificate mode `cert_sn` (the SN of the certificate
/// whose key signs) goes before `sign` as `alipay_cert_sn`, in signed answers.
pub fn render_signed_by(
    reply: &Reply,
    key: &PrivateKey,
    tamper: Option<SignTamper>,
    cert_sn: Option<&str>,
) -> Result<Vec<u8>, RenderError> {
    let json = serde_json::to_string(&reply.node)?;
    render_node(
        &json,
        reply.node_name,
        reply.sign_type,
        reply.charset,
        key,
        tamper,
        cert_sn,
    )
}

/// The body around an already serialized node (`json`).
pub(crate) fn render_node(
    json: &str,
    node_name: &str,
    sign_type: Option<crate::upstream::signing::SignType>,
    charset: crate::upstream::signing::Charset,
    key: &PrivateKey,
    tamper: Option<SignTamper>,
    cert_sn: Option<&str>,
) -> Result<Vec<u8>, RenderError> {
    let node = charset.encode(json);
    let mut body = Vec::with_capacity(node.len() + node_name.len() + 400);
    body.extend_from_slice(b"{\"");
    body.extend_from_slice(node_name.as_bytes());
    body.extend_from_slice(b"\":");
    body.extend_from_slice(&node);
    if let Some(sign_type) = sign_type {
        if let Some(cert_sn) = cert_sn {
            body.extend_from_slice(b",\"alipay_cert_sn\":\"");
            body.extend_from_slice(cert_sn.as_bytes());
            body.push(b'"');
        }
        let sign = key.sign(sign_type, &node)?;
        let sent = match tamper {
            None => Some(sign),
            Some(SignTamper::Flipped) => Some(flip_sign(&sign)),
            Some(SignTamper::Stripped) => None,
        };
        if let Some(sign) = sent {
            body.extend_from_slice(b",\"sign\":\"");
            body.extend_from_slice(sign.as_bytes());
            body.push(b'"');
        }
    }
    body.push(b'}');
    Ok(body)
}
