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
    let mut raw: serde_json::Value = serde::Deserialize::deserialize(&mut *de)
        .map_err(|e| BodyError::Malformed(format!("malformed JSON: {e}")))?;
    de.end()
        .map_err(|_| BodyError::Malformed("unexpected data after the JSON object".into()))?;
    integral_floats_as_integers(&mut raw);
    let value = serde_path_to_error::deserialize(raw).map_err(|e| {
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
    Ok(value)
}

/// JSON has one number type: `3880.0` is the integer 3880 to a JSON Schema (and to JavaScript),
/// so an integer field takes it. Floats with a fraction, or out of the 64-bit range, stay floats
/// (and are refused by an integer field, naming it).
fn integral_floats_as_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
            {
                if f >= 0.0 && f < u64::MAX as f64 {
                    *v = Value::from(f as u64);
                } else if f < 0.0 && f >= i64::MIN as f64 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(o) => o.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct T {
        timeout_sec: u64,
        #[serde(default)]
        nested: Option<Vec<i32>>,
    }

    #[test]
    fn integral_floats_are_integers_and_fractions_name_the_field() {
        let t: T = parse_object(br#"{"timeout_sec": 3880.0, "nested": [-2.0, 3]}"#).unwrap();
        assert_eq!((t.timeout_sec, t.nested), (3880, Some(vec![-2, 3])));
        match parse_object::<T>(br#"{"timeout_sec": 1.5}"#) {
            Err(BodyError::Field { field, .. }) => assert_eq!(field, "timeout_sec"),
            other => panic!("{other:?}"),
        }
        match parse_object::<T>(br#"{"nested": []}"#) {
            Err(BodyError::Field { field, .. }) => assert_eq!(field, "timeout_sec"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_object::<T>(br#"{"timeout_sec": 1} x"#),
            Err(BodyError::Malformed(_))
        ));
    }
}
