//! Where every value of a loaded config came from, kept beside the values so that errors
//! found after loading (a name no registry knows) can still point at file:line.

use std::collections::BTreeMap;

use super::entry::ConfigEntry;
use super::error::ConfigError;
use super::origin::Origin;
use super::yaml::{Node, NodeKind};

/// Dotted key -> where its current value was set. Lives in the config tree but is not a
/// key: it is never merged from YAML, never written out, and two configs that differ only
/// in it are equal.
#[derive(Debug, Clone, Default)]
pub struct Origins(BTreeMap<String, Origin>);

impl PartialEq for Origins {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Origins {
    pub fn get(&self, key: &str) -> Option<&Origin> {
        self.0.get(key)
    }

    /// Records the origin of every leaf of `node`, a mapping merged at `path`.
    pub(crate) fn record(&mut self, path: &str, node: &Node) {
        match &node.kind {
            NodeKind::Map(entries) => {
                for (key, child) in entries {
                    let full = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    self.record(&full, child);
                }
            }
            _ => {
                self.0.insert(path.to_string(), node.origin.clone());
            }
        }
    }
}

impl ConfigEntry for Origins {
    fn merge(&mut self, path: &str, node: &Node) -> Result<(), ConfigError> {
        Err(ConfigError::UnknownKey {
            key: path.to_string(),
            origin: node.origin.clone(),
            suggestion: None,
        })
    }

    fn emit(&self, _indent: usize, _out: &mut String) {}

    fn leaf_paths(&self, _path: &str, _out: &mut Vec<String>) {}

    fn is_hidden(&self) -> bool {
        true
    }
}
