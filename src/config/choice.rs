//! Enumerated config values: each is a Rust enum parsed while the config is merged, so a
//! bad value fails at load with file:line, the allowed values and the closest one.
//!
//! [`config_choice!`] declares such an enum with its YAML spellings (the first is the
//! canonical one, written back by `OUTPUT_DIR/config.yaml`; the others are accepted
//! aliases). Enums that live in lower modules (`ops::Activation`, `layers::NormKind`)
//! get the same parsing through [`impl_choice!`].

use super::entry::{ConfigEntry, ConfigValue};
use super::error::ConfigError;
use super::yaml::{Node, NodeKind};
use crate::utils::distance::closest;

/// A closed set of named values.
pub trait Choice: Sized + Copy + PartialEq + 'static {
    /// Every accepted spelling and its value; the first spelling of a value is canonical.
    const SPELLINGS: &'static [(&'static str, Self)];

    /// The canonical spelling.
    fn name(&self) -> &'static str {
        Self::SPELLINGS
            .iter()
            .find(|(_, v)| v == self)
            .map(|(n, _)| *n)
            .expect("every value has a spelling")
    }

    /// Canonical spellings, in declaration order.
    fn names() -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for (n, v) in Self::SPELLINGS {
            if !Self::SPELLINGS
                .iter()
                .any(|(m, w)| w == v && out.contains(m))
            {
                out.push(n);
            }
        }
        out
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::SPELLINGS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// The canonical names, quoted, for messages: `"BN", "FrozenBN"`.
fn listed(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `node` as one of `T`'s spellings; the error names the key, the allowed values
/// and the closest one.
pub fn parse_choice<T: Choice>(path: &str, node: &Node) -> Result<T, ConfigError> {
    let text = match &node.kind {
        NodeKind::Scalar(s, _) => s.clone(),
        _ if node.is_null() => String::new(),
        _ => {
            return Err(ConfigError::Type {
                key: path.to_string(),
                origin: node.origin.clone(),
                expected: format!("one of {}", listed(&T::names())),
                found: node.describe(),
            })
        }
    };
    T::from_name(&text).ok_or_else(|| {
        let names = T::names();
        let suggestion = closest(&text, names.iter().copied()).or_else(|| {
            names
                .iter()
                .find(|n| n.eq_ignore_ascii_case(&text))
                .map(|n| n.to_string())
        });
        ConfigError::Choice {
            key: path.to_string(),
            origin: node.origin.clone(),
            found: text,
            allowed: listed(&names),
            suggestion,
        }
    })
}

/// `ConfigValue`/`ConfigEntry` for a [`Choice`] and for `Option` of it (`""` is `None`).
#[macro_export]
macro_rules! impl_choice {
    ($t:ty) => {
        impl $crate::config::entry::ConfigEntry for $t {
            fn merge(
                &mut self,
                path: &str,
                node: &$crate::config::yaml::Node,
            ) -> Result<(), $crate::config::error::ConfigError> {
                *self = $crate::config::choice::parse_choice::<$t>(path, node)?;
                Ok(())
            }
            fn emit(&self, _indent: usize, out: &mut String) {
                out.push_str(
                    &serde_json::to_string(<$t as $crate::config::choice::Choice>::name(self))
                        .expect("strings always serialize"),
                );
            }
            fn leaf_paths(&self, path: &str, out: &mut Vec<String>) {
                out.push(path.to_string());
            }
        }

        impl $crate::config::entry::ConfigEntry for Option<$t> {
            fn merge(
                &mut self,
                path: &str,
                node: &$crate::config::yaml::Node,
            ) -> Result<(), $crate::config::error::ConfigError> {
                let empty = match &node.kind {
                    $crate::config::yaml::NodeKind::Scalar(s, _) => s.is_empty(),
                    _ => node.is_null(),
                };
                *self = if empty {
                    None
                } else {
                    Some($crate::config::choice::parse_choice::<$t>(path, node)?)
                };
                Ok(())
            }
            fn emit(&self, _indent: usize, out: &mut String) {
                let name = self
                    .as_ref()
                    .map(<$t as $crate::config::choice::Choice>::name)
                    .unwrap_or("");
                out.push_str(&serde_json::to_string(name).expect("strings always serialize"));
            }
            fn leaf_paths(&self, path: &str, out: &mut Vec<String>) {
                out.push(path.to_string());
            }
        }
    };
}

/// Declares a config enum with its spellings:
/// `config_choice! { /// doc \n pub enum X { A = "a" | "alias", B = "b" } }`.
#[macro_export]
macro_rules! config_choice {
    ($(#[$meta:meta])* pub enum $name:ident {
        $( $(#[$vmeta:meta])* $variant:ident = $first:literal $(| $alias:literal)* ),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $( $(#[$vmeta])* $variant, )* }

        impl $crate::config::choice::Choice for $name {
            const SPELLINGS: &'static [(&'static str, Self)] = &[
                $( ($first, Self::$variant), $( ($alias, Self::$variant), )* )*
            ];
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::config::choice::Choice::name(self))
            }
        }

        $crate::impl_choice!($name);
    };
}

// Keep the value traits in scope for the macros' users.
#[allow(unused_imports)]
use {ConfigEntry as _, ConfigValue as _};
