//! Bounds on what one manifest may cost, enforced before the document trees are built.
//!
//! Threat: whoever can write a manifest (into the agent's directory, or a file handed to the
//! lab) makes the parser spend unbounded time or memory. serde_yaml's scanner was quadratic in
//! the nesting of flow collections: 240 KB of `[` took 366 s (loaded machine) and blocked the
//! agent's loop. YAML is now read with serde-saphyr, a streaming parser whose budget is checked
//! on every parser event, *before* the event becomes part of a tree: it stops at the first
//! event over a limit, so the cost of a hostile file is bounded by the limits, not by its
//! shape. Aliases are replayed as events and count against the same node budget, so an alias
//! bomb ("billion laughs") stops at [`Limits::document_nodes`] too. JSON documents are measured
//! as raw text (size, nesting) before they are parsed.
//!
//! The default limits sit well above real manifests: a 10,000-rule NetworkPolicy is 0.9 MB
//! and 150,000 nodes, nested 8 deep; the API server refuses objects over 3 MiB (its request
//! size limit), and a `kubectl get -o yaml` dump with managedFields nests ~20 deep.

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::budget::BudgetBreach;

use super::strict::Tree;
use super::{Error, Format};

/// What one manifest may hold. `Limits::default()` is what the agent enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes of one manifest file.
    pub file_bytes: u64,
    /// Documents in one file.
    pub documents: usize,
    /// Nesting of mappings and sequences in one document.
    pub depth: usize,
    /// Nodes (mappings, sequences, scalars) of one YAML document, aliases expanded.
    pub document_nodes: usize,
    /// Bytes of scalar text in one YAML document (aliases expanded); bytes of one JSON document.
    pub document_bytes: usize,
    /// Alias references (`*name`) in one YAML document.
    pub aliases: usize,
    /// Nodes that aliases may expand to in one file (events replayed from anchors): bounds an
    /// alias bomb well below `document_nodes`; real manifests alias a few small blocks.
    pub alias_expansion: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            file_bytes: 16 << 20,
            documents: 10_000,
            depth: 64,
            document_nodes: 1_000_000,
            document_bytes: 3 << 20,
            aliases: 10_000,
            alias_expansion: 100_000,
        }
    }
}

impl Limits {
    fn saphyr_options(&self) -> serde_saphyr::Options {
        serde_saphyr::options! {
            // The budget is per document (`read` enforces it so); the file as a whole is
            // bounded by `file_bytes` and `documents`, checked by the caller.
            budget: serde_saphyr::budget! {
                max_reader_input_bytes: Some(self.file_bytes as usize),
                max_depth: self.depth,
                flow_nesting_limit: self.depth,
                max_nodes: self.document_nodes,
                max_events: self.document_nodes.saturating_mul(2),
                max_total_scalar_bytes: self.document_bytes,
                max_aliases: self.aliases,
                max_anchors: self.aliases,
                max_recorded_anchor_events: self.document_nodes,
                max_recorded_anchor_bytes: self.document_bytes,
            },
            alias_limits: serde_saphyr::alias_limits! {
                max_total_replayed_events: self.alias_expansion,
                max_replay_stack_depth: self.depth,
            },
            duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
            // YAML 1.2 core schema, as serde_yaml read it: `on`/`yes` are strings.
            strict_booleans: true,
            with_snippet: false,
        }
    }

    /// Why `breach` stopped the parser, naming the limit.
    fn breach(&self, breach: &BudgetBreach) -> String {
        match breach {
            BudgetBreach::Depth { .. } => {
                format!("nested deeper than {} levels (the limit)", self.depth)
            }
            BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => format!(
                "more than {} nodes, aliases expanded (the limit per document)",
                self.document_nodes
            ),
            BudgetBreach::ScalarBytes { .. } | BudgetBreach::RecordedAnchorBytes { .. } => {
                format!(
                    "more than {} bytes of text, aliases expanded (the limit per document)",
                    self.document_bytes
                )
            }
            BudgetBreach::Aliases { .. }
            | BudgetBreach::Anchors { .. }
            | BudgetBreach::AliasAnchorRatio { .. }
            | BudgetBreach::RecordedAnchorEvents { .. } => format!(
                "too many aliases or anchors (limit {} per document, at most 10 aliases per anchor \
                 once 100 are used)",
                self.aliases
            ),
            BudgetBreach::InputBytes { .. } => format!(
                "over the limit of {} bytes per manifest file",
                self.file_bytes
            ),
            other => format!("over a parser limit ({other:?})"),
        }
    }

    fn yaml_error(&self, document: usize, e: serde_saphyr::Error) -> Error {
        let mut inner = &e;
        while let serde_saphyr::Error::WithSnippet { error, .. }
        | serde_saphyr::Error::AliasError { error, .. } = inner
        {
            inner = error;
        }
        let at = inner
            .location()
            .map(|l| format!(" at line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        match inner {
            serde_saphyr::Error::Budget { breach, .. } => Error::Limit {
                document,
                what: format!("{}{at}", self.breach(breach)),
            },
            serde_saphyr::Error::AliasReplayLimitExceeded { .. }
            | serde_saphyr::Error::AliasExpansionLimitExceeded { .. } => Error::Limit {
                document,
                what: format!(
                    "aliases expand to more than {} nodes (the limit per file){at}",
                    self.alias_expansion
                ),
            },
            serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => Error::Limit {
                document,
                what: format!(
                    "aliases nested deeper than {} levels (the limit){at}",
                    self.depth
                ),
            },
            _ => {
                let message = inner.to_string();
                // Flow collections nested past the parser's own limit, which we set to ours.
                if message.contains("recursion limit") || message.contains("nesting limit") {
                    return Error::Limit {
                        document,
                        what: format!("nested deeper than {} levels (the limit){at}", self.depth),
                    };
                }
                Error::Syntax {
                    document,
                    format: Format::Yaml.name(),
                    message,
                }
            }
        }
    }
}

/// One YAML document's tree, with the line where it starts.
#[derive(Deserialize)]
#[serde(transparent)]
struct SpannedTree(serde_saphyr::Spanned<Tree>);

/// Calls `read` with each YAML document's tree (empty documents skipped). Syntax errors and
/// limits end the file; a document whose tree cannot be built (a duplicate key) too, since
/// kubectl refuses it as well and its other keys cannot be trusted.
pub(super) fn yaml_documents(
    text: &str,
    limits: &Limits,
    read: &mut dyn FnMut(usize, Option<u64>, Value),
) -> Result<(), Error> {
    let mut bytes = text.as_bytes();
    let docs =
        serde_saphyr::read_with_options::<_, SpannedTree>(&mut bytes, limits.saphyr_options());
    for (document, doc) in docs.enumerate() {
        if document >= limits.documents {
            return Err(Error::Limit {
                document,
                what: format!(
                    "more than {} documents (the limit per file)",
                    limits.documents
                ),
            });
        }
        let SpannedTree(spanned) = doc.map_err(|e| limits.yaml_error(document, e))?;
        read(document, Some(spanned.defined.line()), spanned.value.0);
    }
    Ok(())
}

/// Calls `read` with each JSON document's tree. Each document is first scanned as raw text
/// (syntax, size, nesting) and only then turned into a tree.
pub(super) fn json_documents(
    text: &str,
    limits: &Limits,
    read: &mut dyn FnMut(usize, Option<u64>, Value),
) -> Result<(), Error> {
    let stream =
        serde_json::Deserializer::from_str(text).into_iter::<&serde_json::value::RawValue>();
    for (document, raw) in stream.enumerate() {
        let syntax = |e: serde_json::Error| Error::Syntax {
            document,
            format: Format::Json.name(),
            message: e.to_string(),
        };
        if document >= limits.documents {
            return Err(Error::Limit {
                document,
                what: format!(
                    "more than {} documents (the limit per file)",
                    limits.documents
                ),
            });
        }
        let raw = raw.map_err(syntax)?.get();
        if raw.len() > limits.document_bytes {
            return Err(Error::Limit {
                document,
                what: format!(
                    "{} bytes, over the limit of {} per document",
                    raw.len(),
                    limits.document_bytes
                ),
            });
        }
        if json_depth(raw) > limits.depth {
            return Err(Error::Limit {
                document,
                what: format!("nested deeper than {} levels (the limit)", limits.depth),
            });
        }
        let Tree(tree) = serde_json::from_str(raw).map_err(syntax)?;
        read(document, None, tree);
    }
    Ok(())
}

/// Nesting depth of valid JSON text: brackets outside strings.
fn json_depth(raw: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in raw.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::json_depth;

    #[test]
    fn json_depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth(r#"{"a": [1, {"b": "[[[\"{{"}]}"#), 3);
        assert_eq!(json_depth("5"), 0);
    }
}
