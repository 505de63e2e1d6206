//! Typed config entries: leaves parse themselves from YAML nodes, groups dispatch on keys.
//!
//! Each group is declared once with [`config_group!`]; the macro generates the struct, its
//! defaults, key dispatch, unknown-key detection and YAML output, so adding a key is a
//! one-line change and the key list can never drift from the struct.

use super::error::ConfigError;
use super::yaml::{Node, NodeKind};

/// Anything that can live in the config tree.
pub trait ConfigEntry {
    /// Merges `node` into `self`; `path` is this entry's full dotted key.
    fn merge(&mut self, path: &str, node: &Node) -> Result<(), ConfigError>;
    /// Appends this entry as YAML at `indent` (a leaf writes only its inline value).
    fn emit(&self, indent: usize, out: &mut String);
    /// Full dotted paths of all leaves below `path` (a leaf returns just `path`).
    fn leaf_paths(&self, path: &str, out: &mut Vec<String>);
    /// Every numeric leaf below `path` with its values (a list gives all its numbers), for
    /// the range checks.
    fn numeric_leaves(&self, _path: &str, _out: &mut Vec<(String, Vec<f64>)>) {}
    fn is_group(&self) -> bool {
        false
    }
    /// Bookkeeping that lives in the tree but is not a key: never written out.
    fn is_hidden(&self) -> bool {
        false
    }
}

/// A leaf value type: parsed from one YAML node, written back inline.
pub trait ConfigValue: Sized {
    /// The type's name as shown in errors.
    fn type_name() -> String;
    fn parse(node: &Node) -> Option<Self>;
    fn inline(&self) -> String;
}

fn scalar(node: &Node) -> Option<(&str, bool)> {
    match &node.kind {
        NodeKind::Scalar(s, quoted) => Some((s.as_str(), *quoted)),
        _ => None,
    }
}

impl ConfigValue for f64 {
    fn type_name() -> String {
        "a number".into()
    }
    fn parse(node: &Node) -> Option<Self> {
        match scalar(node)? {
            (s, false) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
    }
    fn inline(&self) -> String {
        // `{:?}` keeps a decimal point or exponent, so the value reads back as a float.
        format!("{self:?}")
    }
}

impl ConfigValue for i64 {
    fn type_name() -> String {
        "an integer".into()
    }
    fn parse(node: &Node) -> Option<Self> {
        match scalar(node)? {
            (s, false) => s.trim().parse::<i64>().ok(),
            _ => None,
        }
    }
    fn inline(&self) -> String {
        self.to_string()
    }
}

impl ConfigValue for usize {
    fn type_name() -> String {
        "a non-negative integer".into()
    }
    fn parse(node: &Node) -> Option<Self> {
        match scalar(node)? {
            (s, false) => s.trim().parse::<usize>().ok(),
            _ => None,
        }
    }
    fn inline(&self) -> String {
        self.to_string()
    }
}

impl ConfigValue for bool {
    fn type_name() -> String {
        "a boolean (true/false)".into()
    }
    fn parse(node: &Node) -> Option<Self> {
        match scalar(node)? {
            ("true" | "True" | "TRUE", false) => Some(true),
            ("false" | "False" | "FALSE", false) => Some(false),
            _ => None,
        }
    }
    fn inline(&self) -> String {
        self.to_string()
    }
}

impl ConfigValue for String {
    fn type_name() -> String {
        "a string".into()
    }
    fn parse(node: &Node) -> Option<Self> {
        if node.is_null() {
            return Some(String::new());
        }
        scalar(node).map(|(s, _)| s.to_string())
    }
    fn inline(&self) -> String {
        // JSON string syntax is valid double-quoted YAML.
        serde_json::to_string(self).expect("strings always serialize")
    }
}

impl<T: ConfigValue> ConfigValue for Vec<T> {
    fn type_name() -> String {
        format!("a list of {}", T::type_name().trim_start_matches("a "))
    }
    fn parse(node: &Node) -> Option<Self> {
        match &node.kind {
            NodeKind::Seq(items) => items.iter().map(T::parse).collect(),
            _ => None,
        }
    }
    fn inline(&self) -> String {
        let items: Vec<String> = self.iter().map(T::inline).collect();
        format!("[{}]", items.join(", "))
    }
}

macro_rules! leaf_entry {
    ($($t:ty),*) => {$(
        impl ConfigEntry for $t {
            fn merge(&mut self, path: &str, node: &Node) -> Result<(), ConfigError> {
                *self = <$t as ConfigValue>::parse(node).ok_or_else(|| ConfigError::Type {
                    key: path.to_string(),
                    origin: node.origin.clone(),
                    expected: <$t as ConfigValue>::type_name(),
                    found: node.describe(),
                })?;
                Ok(())
            }
            fn emit(&self, _indent: usize, out: &mut String) {
                out.push_str(&self.inline());
            }
            fn leaf_paths(&self, path: &str, out: &mut Vec<String>) {
                out.push(path.to_string());
            }
            fn numeric_leaves(&self, path: &str, out: &mut Vec<(String, Vec<f64>)>) {
                if let Some(v) = Numbers::numbers(self) {
                    out.push((path.to_string(), v));
                }
            }
        }
    )*};
}

/// The numbers in a leaf value, if it holds numbers.
trait Numbers {
    fn numbers(&self) -> Option<Vec<f64>> {
        None
    }
}

impl Numbers for f64 {
    fn numbers(&self) -> Option<Vec<f64>> {
        Some(vec![*self])
    }
}
impl Numbers for i64 {
    fn numbers(&self) -> Option<Vec<f64>> {
        Some(vec![*self as f64])
    }
}
impl Numbers for usize {
    fn numbers(&self) -> Option<Vec<f64>> {
        Some(vec![*self as f64])
    }
}
impl Numbers for Vec<f64> {
    fn numbers(&self) -> Option<Vec<f64>> {
        Some(self.clone())
    }
}
impl Numbers for Vec<i64> {
    fn numbers(&self) -> Option<Vec<f64>> {
        Some(self.iter().map(|&v| v as f64).collect())
    }
}
impl Numbers for Vec<usize> {
    fn numbers(&self) -> Option<Vec<f64>> {
        Some(self.iter().map(|&v| v as f64).collect())
    }
}
impl Numbers for Vec<Vec<f64>> {
    fn numbers(&self) -> Option<Vec<f64>> {
        Some(self.iter().flatten().copied().collect())
    }
}
impl Numbers for bool {}
impl Numbers for String {}
impl Numbers for Vec<String> {}

leaf_entry!(
    f64,
    i64,
    usize,
    bool,
    String,
    Vec<f64>,
    Vec<i64>,
    Vec<usize>,
    Vec<String>,
    Vec<Vec<f64>>
);

/// Joins a parent path and a key.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Declares a config group: `config_group! { pub struct X { /// doc \n field: Type = default, ... } }`.
/// The YAML key of a field is its name in upper case.
#[macro_export]
macro_rules! config_group {
    ($(#[$meta:meta])* pub struct $name:ident {
        $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $default:expr ),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name { $( $(#[$fmeta])* pub $field: $ty, )* }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            /// The YAML keys of this group, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$( stringify!($field) ),*];
        }

        impl $crate::config::entry::ConfigEntry for $name {
            fn merge(
                &mut self,
                path: &str,
                node: &$crate::config::yaml::Node,
            ) -> Result<(), $crate::config::error::ConfigError> {
                use $crate::config::entry::join;
                let $crate::config::yaml::NodeKind::Map(entries) = &node.kind else {
                    if node.is_null() {
                        return Ok(());
                    }
                    return Err($crate::config::error::ConfigError::Type {
                        key: path.to_string(),
                        origin: node.origin.clone(),
                        expected: "a mapping of keys".to_string(),
                        found: node.describe(),
                    });
                };
                for (key, child) in entries {
                    let full = join(path, key);
                    let lower = key.to_ascii_lowercase();
                    // Keys are upper case, as in Detectron2; a lower-case spelling is a typo.
                    if key.chars().any(|c| c.is_ascii_lowercase()) {
                        return Err($crate::config::error::ConfigError::UnknownKey {
                            key: full,
                            origin: child.origin.clone(),
                            suggestion: None,
                        });
                    }
                    match lower.as_str() {
                        $( stringify!($field) => self.$field.merge(&full, child)?, )*
                        _ => {
                            return Err($crate::config::error::ConfigError::UnknownKey {
                                key: full,
                                origin: child.origin.clone(),
                                suggestion: None,
                            })
                        }
                    }
                }
                Ok(())
            }

            fn emit(&self, indent: usize, out: &mut String) {
                $(
                    if !self.$field.is_hidden() {
                    out.push_str(&" ".repeat(indent));
                    out.push_str(&stringify!($field).to_ascii_uppercase());
                    out.push(':');
                    if self.$field.is_group() {
                        out.push('\n');
                        self.$field.emit(indent + 2, out);
                    } else {
                        out.push(' ');
                        self.$field.emit(indent, out);
                        out.push('\n');
                    }
                    }
                )*
            }

            fn leaf_paths(&self, path: &str, out: &mut Vec<String>) {
                use $crate::config::entry::join;
                $( self.$field.leaf_paths(
                    &join(path, &stringify!($field).to_ascii_uppercase()), out); )*
            }

            fn numeric_leaves(&self, path: &str, out: &mut Vec<(String, Vec<f64>)>) {
                use $crate::config::entry::join;
                $( self.$field.numeric_leaves(
                    &join(path, &stringify!($field).to_ascii_uppercase()), out); )*
            }

            fn is_group(&self) -> bool {
                true
            }
        }
    };
}
