//! Checks HTTP requests against Firecracker's own API description
//! (`shared/specs/firecracker-swagger.yaml`, Swagger 2.0): the path exists (templates such as
//! `/drives/{drive_id}` match one segment), the method is one of its operations, and the body is
//! what the operation's `in: body` parameter describes — required fields present, no property a
//! schema with `properties` does not list, enum values among the listed ones, types right,
//! integer bounds kept, `$ref`s followed.

use std::path::PathBuf;

use serde_json::{Map, Value};

pub struct Swagger {
    doc: Value,
}

impl Swagger {
    /// The spec beside the repository (`../../../shared/specs` from this crate).
    pub fn path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/specs/firecracker-swagger.yaml")
    }

    pub fn load() -> Swagger {
        let path = Self::path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Swagger {
        let yaml: serde_norway::Value = serde_norway::from_str(text).expect("the spec is YAML");
        let doc = to_json(&yaml);
        assert!(
            doc.get("paths").is_some_and(Value::is_object),
            "the spec has no paths"
        );
        Swagger { doc }
    }

    /// Every way `method path body` breaks the spec; empty when it conforms.
    pub fn check(&self, method: &str, path: &str, body: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        let Some((template, item)) = self.path_item(path) else {
            errors.push(format!("{method} {path}: no such path in the spec"));
            return errors;
        };
        let Some(op) = item.get(method.to_ascii_lowercase()) else {
            errors.push(format!(
                "{method} {path}: {template} has no {method} operation"
            ));
            return errors;
        };
        let params = op
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let body_param = params
            .iter()
            .find(|p| p.get("in").and_then(Value::as_str) == Some("body"));
        match (body_param, body) {
            (None, Value::Null) => {}
            (None, _) => errors.push(format!("{method} {path}: the operation takes no body")),
            (Some(p), Value::Null) => {
                if p.get("required").and_then(Value::as_bool) == Some(true) {
                    errors.push(format!("{method} {path}: the body is required"));
                }
            }
            (Some(p), body) => match p.get("schema") {
                Some(schema) => {
                    self.validate(schema, body, &format!("{method} {path} body"), &mut errors)
                }
                None => errors.push(format!("{method} {path}: body parameter without schema")),
            },
        }
        errors
    }

    /// The path item a concrete path matches: literal segments equal, `{param}` any non-empty
    /// segment; a literal match wins over a templated one.
    fn path_item(&self, path: &str) -> Option<(String, &Value)> {
        let path = path.split('?').next().unwrap_or(path);
        let paths = self.doc.get("paths")?.as_object()?;
        if let Some(item) = paths.get(path) {
            return Some((path.to_owned(), item));
        }
        let segs: Vec<&str> = path.split('/').collect();
        paths.iter().find_map(|(template, item)| {
            let t: Vec<&str> = template.split('/').collect();
            let matches = t.len() == segs.len()
                && t.iter().zip(&segs).all(|(t, s)| {
                    if t.starts_with('{') && t.ends_with('}') {
                        !s.is_empty()
                    } else {
                        t == s
                    }
                });
            matches.then(|| (template.clone(), item))
        })
    }

    fn resolve<'a>(&'a self, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        self.doc.pointer(pointer)
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            match self.resolve(reference) {
                Some(target) => self.validate(target, value, at, errors),
                None => errors.push(format!("{at}: unresolvable $ref {reference}")),
            }
            return;
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let type_ok = match ty {
            Some("object") => value.is_object(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            Some("array") => value.is_array(),
            Some(other) => {
                errors.push(format!("{at}: the spec uses an unknown type {other}"));
                return;
            }
            None => true,
        };
        if !type_ok {
            errors.push(format!("{at}: expected {}, got {value}", ty.unwrap_or("?")));
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            errors.push(format!(
                "{at}: {value} is not one of {}",
                Value::Array(allowed.clone())
            ));
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                errors.push(format!("{at}: {value} is below the minimum {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                errors.push(format!("{at}: {value} is above the maximum {max}"));
            }
        }
        if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
            for (i, v) in values.iter().enumerate() {
                self.validate(items, v, &format!("{at}[{i}]"), errors);
            }
        }
        if let Some(object) = value.as_object() {
            self.validate_object(schema, object, at, errors);
        }
    }

    fn validate_object(
        &self,
        schema: &Value,
        object: &Map<String, Value>,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        for field in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(field) {
                errors.push(format!("{at}: required property {field:?} is missing"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (key, v) in object {
            let here = format!("{at}.{key}");
            match (properties.and_then(|p| p.get(key)), additional) {
                (Some(prop), _) => self.validate(prop, v, &here, errors),
                (None, Some(Value::Bool(true))) => {}
                (None, Some(extra)) if extra.is_object() => self.validate(extra, v, &here, errors),
                (None, _) if properties.is_some() => {
                    errors.push(format!("{at}: unknown property {key:?}"));
                }
                (None, _) => {}
            }
        }
    }
}

/// YAML to JSON; mapping keys (such as the response codes `200:`) become strings.
fn to_json(v: &serde_norway::Value) -> Value {
    use serde_norway::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64().map(Value::from).unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s.clone(),
                        other => match to_json(other) {
                            Value::String(s) => s,
                            j => j.to_string(),
                        },
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => to_json(&t.value),
    }
}
