//! Parsing a JSON request body so that its errors name the field: shared by the server's and the
//! agent's HTTP front-ends, each of which maps [`BodyError`] to its own error answer.

use serde::de::DeserializeOwned;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not a JSON object at all, or broken JSON.
    Malformed(String),
    /// A missing or mistyped field, named by its path (`network.allow_out`).
    Field { field: String, message: String },
}

/// One JSON object from `bytes`: empty bodies, non-objects, trailing data and mistyped fields are
/// refused with the field's path.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(BodyError::Malformed(
                "the request body is empty; send a JSON object".into(),
            ));
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(BodyError::Malformed(
                "the request body must be a JSON object".into(),
            ));
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let msg = inner.to_string();
                // serde reports a missing field at the parent's path; name the field itself.
                let field = msg
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                    .map(|f| {
                        if path == "." {
                            f.to_string()
                        } else {
                            format!("{path}.{f}")
                        }
                    })
                    .unwrap_or_else(|| {
                        if path == "." {
                            "body".to_string()
                        } else {
                            path.clone()
                        }
                    });
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                BodyError::Field {
                    field,
                    message: msg,
                }
            }
            _ => BodyError::Malformed(format!("malformed JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|_| BodyError::Malformed("unexpected data after the JSON object".into()))?;
    Ok(value)
}
