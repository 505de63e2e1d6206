//! A YAML tree that remembers where every value came from.
//!
//! Typed config errors must name the file and line at fault, which plain YAML values
//! (`yaml_rust2::Yaml`, `serde_yaml::Value`) forget; so the config is parsed from the
//! marked event stream into this small tree instead.

use std::sync::Arc;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::error::ConfigError;
pub use super::origin::Origin;

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar and whether it was quoted (a quoted `"1"` is a string, never a number).
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub origin: Origin,
}

impl Node {
    pub fn map(entries: Vec<(String, Node)>, origin: Origin) -> Node {
        Node {
            kind: NodeKind::Map(entries),
            origin,
        }
    }

    /// Short description of what was found, for type errors.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar(s, _) if s.is_empty() => "an empty value".to_string(),
            NodeKind::Scalar(s, _) => format!("`{s}`"),
            NodeKind::Seq(items) => format!("a list of {} item(s)", items.len()),
            NodeKind::Map(_) => "a mapping".to_string(),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar(s, false) if s.is_empty() || s == "~" || s == "null")
    }
}

enum Frame {
    Seq(Vec<Node>, Origin),
    Map(Vec<(String, Node)>, Option<String>, Origin),
}

struct Builder {
    source: Arc<str>,
    stack: Vec<Frame>,
    root: Option<Node>,
    error: Option<ConfigError>,
}

impl Builder {
    fn origin(&self, mark: &Marker) -> Origin {
        Origin {
            source: self.source.clone(),
            line: mark.line(),
        }
    }

    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(items, _)) => items.push(node),
            Some(Frame::Map(entries, pending, _)) => match pending.take() {
                Some(key) => {
                    if entries.iter().any(|(k, _)| *k == key) && self.error.is_none() {
                        self.error = Some(ConfigError::Yaml {
                            origin: node.origin.clone(),
                            message: format!("duplicate key `{key}`"),
                        });
                    }
                    entries.push((key, node));
                }
                None => match node.kind {
                    NodeKind::Scalar(key, _) => *pending = Some(key),
                    _ => {
                        if self.error.is_none() {
                            self.error = Some(ConfigError::Yaml {
                                origin: node.origin,
                                message: "mapping keys must be plain scalars".to_string(),
                            });
                        }
                        *pending = Some(String::new());
                    }
                },
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let origin = self.origin(&mark);
        match ev {
            Event::Scalar(value, style, _, _) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                self.push_value(Node {
                    kind: NodeKind::Scalar(value, quoted),
                    origin,
                });
            }
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(Vec::new(), origin)),
            Event::MappingStart(..) => self.stack.push(Frame::Map(Vec::new(), None, origin)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(items, origin)) => Node {
                        kind: NodeKind::Seq(items),
                        origin,
                    },
                    Some(Frame::Map(entries, _, origin)) => Node::map(entries, origin),
                    None => return,
                };
                self.push_value(node);
            }
            Event::Alias(_) if self.error.is_none() => {
                self.error = Some(ConfigError::Yaml {
                    origin,
                    message: "YAML anchors and aliases are not supported in configs".into(),
                });
            }
            _ => {}
        }
    }
}

/// Parses one YAML document. An empty document is an empty mapping.
pub fn parse(text: &str, source: &str) -> Result<Node, ConfigError> {
    let source: Arc<str> = Arc::from(source);
    let mut builder = Builder {
        source: source.clone(),
        stack: Vec::new(),
        root: None,
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, false)
        .map_err(|e| ConfigError::Yaml {
            origin: Origin {
                source: source.clone(),
                line: e.marker().line(),
            },
            message: e.info().to_string(),
        })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder
        .root
        .unwrap_or_else(|| Node::map(Vec::new(), Origin { source, line: 1 })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based() {
        let node = parse("A:\n  B: 1\n  C: [x, 'y']\n", "f.yaml").unwrap();
        let NodeKind::Map(entries) = &node.kind else {
            panic!("not a map")
        };
        let NodeKind::Map(inner) = &entries[0].1.kind else {
            panic!("not a map")
        };
        assert_eq!(inner[0].1.origin.line, 2);
        assert_eq!(inner[1].1.origin.line, 3);
        let NodeKind::Seq(items) = &inner[1].1.kind else {
            panic!("not a seq")
        };
        assert_eq!(items[1].kind, NodeKind::Scalar("y".into(), true));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("A: 1\nA: 2\n", "f.yaml").unwrap_err().to_string();
        assert!(
            err.contains("duplicate key `A`") && err.contains("f.yaml:2"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let err = parse("A:\n  B: [1, 2\nC: 3\n", "f.yaml").unwrap_err();
        assert!(err.to_string().contains("f.yaml:"), "{err}");
    }
}
