//! Strict reading of a document's tree into its k8s-openapi type, as
//! `kubectl apply --validate=strict` does: unknown fields and duplicate keys are errors.
//!
//! Threat: a policy author's typo must not widen what a policy allows. k8s-openapi's
//! `Deserialize` skips fields it does not know, so `egress: [{from: [...]}]` (a typo for `to`)
//! read as an egress rule with no `to`, which allows every destination. `serde_ignored` sees
//! every field the typed deserializer skips; each one is an error naming its path and value.
//! Nulls are not unknown fields (`field: null` is an absent optional field, as for the API
//! server), but an unknown field is one whatever its value.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::{Kind, Object};

/// Unknown fields reported per document at most (the rest are counted).
const MAX_REPORTED: usize = 8;
/// Characters of a value quoted in a problem.
const MAX_VALUE_CHARS: usize = 120;

/// A document's tree: `serde_json::Value`, built refusing duplicate keys (YAML and JSON
/// alike; serde_json's own `Value` keeps the last of two equal keys silently).
pub(super) struct Tree(pub Value);

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor).map(Tree)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML/JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a number JSON can hold")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Tree::deserialize(d).map(|t| t.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Tree(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Tree(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A field that made a document unusable.
#[derive(Debug)]
pub(super) struct FieldError {
    /// e.g. `spec.egress[0].from`.
    pub path: String,
    /// Names the value.
    pub message: String,
}

/// Reads `tree` as `kind`, strictly. Namespaced objects without a namespace are put in
/// `default`.
pub(super) fn typed(kind: Kind, tree: &Value) -> Result<Object, Vec<FieldError>> {
    Ok(match kind {
        Kind::Namespace => Object::Namespace(Arc::new(strict(tree)?)),
        Kind::Pod => Object::Pod(Arc::new(namespaced(strict(tree)?))),
        Kind::NetworkPolicy => Object::NetworkPolicy(Arc::new(namespaced(strict(tree)?))),
        Kind::Node => Object::Node(Arc::new(strict(tree)?)),
        Kind::Service => Object::Service(Arc::new(namespaced(strict(tree)?))),
        Kind::EndpointSlice => Object::EndpointSlice(Arc::new(namespaced(strict(tree)?))),
        Kind::ClusterNetworkPolicy => Object::ClusterNetworkPolicy(Arc::new(strict(tree)?)),
    })
}

fn namespaced<
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    mut o: T,
) -> T {
    o.metadata_mut()
        .namespace
        .get_or_insert_with(|| "default".into());
    o
}

fn strict<T: DeserializeOwned>(tree: &Value) -> Result<T, Vec<FieldError>> {
    let mut unknown: Vec<String> = Vec::new();
    let mut ignored = |path: serde_ignored::Path| unknown.push(render(&path));
    let typed =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(tree, &mut ignored));
    let typed = match typed {
        Ok(t) => t,
        Err(e) => {
            let path = e.path().to_string();
            return Err(vec![FieldError {
                message: format!("{}: value {}", e.inner(), quote(lookup(tree, &path))),
                path: if path == "." { String::new() } else { path },
            }]);
        }
    };
    if unknown.is_empty() {
        return Ok(typed);
    }
    let extra = unknown.len().saturating_sub(MAX_REPORTED);
    let mut errors: Vec<FieldError> = unknown
        .into_iter()
        .take(MAX_REPORTED)
        .map(|path| FieldError {
            message: format!(
                "unknown field (not in the schema; kubectl apply --validate=strict refuses it): \
                 value {}",
                quote(lookup(tree, &path))
            ),
            path,
        })
        .collect();
    if extra > 0 {
        errors.push(FieldError {
            path: String::new(),
            message: format!("and {extra} more unknown fields"),
        });
    }
    Err(errors)
}

/// `spec.egress[0].from` for serde_ignored's path.
fn render(path: &serde_ignored::Path) -> String {
    fn parts(path: &serde_ignored::Path, out: &mut Vec<String>) {
        use serde_ignored::Path;
        match path {
            Path::Root => {}
            Path::Seq { parent, index } => {
                parts(parent, out);
                out.push(format!("[{index}]"));
            }
            Path::Map { parent, key } => {
                parts(parent, out);
                if !out.is_empty() {
                    out.push(".".into());
                }
                out.push(key.clone());
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => parts(parent, out),
        }
    }
    let mut out = Vec::new();
    parts(path, &mut out);
    out.concat()
}

/// The value at a rendered path (`a.b[2].c`); keys containing `.` or `[` are not looked up.
fn lookup<'a>(tree: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = tree;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            v = v.as_object()?.get(key)?;
        }
        for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            v = v.as_array()?.get(index.parse::<usize>().ok()?)?;
        }
    }
    Some(v)
}

/// A value as a problem quotes it: compact JSON, cut at `MAX_VALUE_CHARS`.
fn quote(v: Option<&Value>) -> String {
    let Some(v) = v else {
        return "(not found)".into();
    };
    let s = v.to_string();
    if s.chars().count() <= MAX_VALUE_CHARS {
        return s;
    }
    let cut: String = s.chars().take(MAX_VALUE_CHARS).collect();
    format!("{cut}...")
}
