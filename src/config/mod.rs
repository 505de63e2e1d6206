//! Configuration: typed defaults in code, YAML files with `_BASE_` inheritance, and
//! `KEY VALUE` command-line overrides, as Detectron2's `CfgNode` works.

#[doc(hidden)]
pub mod choice;
mod choices;
mod defaults;
#[doc(hidden)]
pub mod entry;
pub(crate) mod error;
mod origin;
mod origins;
mod ranges;
#[doc(hidden)]
pub mod yaml;

use std::path::{Path, PathBuf};

use crate::utils::distance::{edit_distance, edit_distance_within};
pub use choice::Choice;
pub use choices::*;
pub use defaults::*;
use entry::ConfigEntry;
pub use error::ConfigError;
pub use origin::Origin;
pub use origins::Origins;
use yaml::{Node, NodeKind};

impl Config {
    /// Defaults, then `path` (with its `_BASE_` chain).
    /// What every tool does: defaults, then the optional config file, then `KEY VALUE`
    /// overrides from the command line.
    pub fn from_args<S: AsRef<str>>(
        file: Option<&Path>,
        opts: &[S],
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(f) = file {
            cfg.merge_from_file(f)?;
        }
        cfg.merge_from_list(opts)?;
        Ok(cfg)
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        cfg.merge_from_file(path)?;
        Ok(cfg)
    }

    /// Merges a YAML file, its `_BASE_` first (relative to the file), deep-merging keys.
    pub fn merge_from_file(&mut self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        self.merge_file_chain(path.as_ref(), &mut Vec::new())
    }

    fn merge_file_chain(
        &mut self,
        path: &Path,
        chain: &mut Vec<PathBuf>,
    ) -> Result<(), ConfigError> {
        let canonical = std::fs::canonicalize(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if chain.contains(&canonical) {
            chain.push(canonical);
            return Err(ConfigError::BaseCycle(chain.clone()));
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let root = yaml::parse(&text, &path.display().to_string())?;
        let NodeKind::Map(entries) = &root.kind else {
            return Err(ConfigError::Type {
                key: "(top level)".into(),
                origin: root.origin.clone(),
                expected: "a mapping of keys".into(),
                found: root.describe(),
            });
        };
        chain.push(canonical);
        let mut rest = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            if key == "_BASE_" {
                let NodeKind::Scalar(base, _) = &value.kind else {
                    return Err(ConfigError::Type {
                        key: "_BASE_".into(),
                        origin: value.origin.clone(),
                        expected: "a file path".into(),
                        found: value.describe(),
                    });
                };
                let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
                if !base_path.exists() {
                    return Err(ConfigError::MissingBase {
                        path: base_path,
                        from: value.origin.clone(),
                    });
                }
                self.merge_file_chain(&base_path, chain)?;
            } else {
                rest.push((key.clone(), value.clone()));
            }
        }
        chain.pop();
        self.merge_node(&Node::map(rest, root.origin.clone()))
    }

    /// Merges YAML text (e.g. a config embedded in a checkpoint).
    pub fn merge_from_str(&mut self, text: &str, source: &str) -> Result<(), ConfigError> {
        let root = yaml::parse(text, source)?;
        self.merge_node(&root)
    }

    /// Applies `KEY VALUE ...` overrides; values are YAML scalars or flow lists (`[res4,res5]`)
    /// and are checked against the key's type.
    pub fn merge_from_list<S: AsRef<str>>(&mut self, opts: &[S]) -> Result<(), ConfigError> {
        // A forgotten value shifts every later pair; the key that lost its value is the
        // one followed by another key, so name that one rather than the last word.
        let keys = self.keys();
        for pair in opts.chunks(2) {
            if let [key, value] = pair {
                if keys.iter().any(|k| k == value.as_ref()) {
                    return Err(ConfigError::OddOverrides(key.as_ref().to_string()));
                }
            }
        }
        if opts.len() % 2 == 1 {
            return Err(ConfigError::OddOverrides(
                opts[opts.len() - 1].as_ref().to_string(),
            ));
        }
        for pair in opts.chunks(2) {
            let (key, value) = (pair[0].as_ref(), pair[1].as_ref());
            let origin = Origin {
                source: format!("command line ({key} {value})").into(),
                line: 0,
            };
            let mut node = match yaml::parse(value, &origin.source) {
                Ok(n) => Node {
                    kind: n.kind,
                    origin: origin.clone(),
                },
                // Not YAML (e.g. `a: b:`): take it verbatim as a string.
                Err(_) => Node {
                    kind: NodeKind::Scalar(value.to_string(), true),
                    origin: origin.clone(),
                },
            };
            if let NodeKind::Map(_) = node.kind {
                // `cuda:0`-like values would never parse as maps without a space; a real
                // mapping here is a mistake, but keep the text for strings.
                node.kind = NodeKind::Scalar(value.to_string(), true);
            }
            for part in key.split('.').rev() {
                node = Node::map(vec![(part.to_string(), node)], origin.clone());
            }
            self.merge_node(&node)?;
        }
        Ok(())
    }

    /// `KEY`, prefixed with the file:line (or override) that set its value when known:
    /// for errors about a value found after loading.
    pub fn located(&self, key: &str) -> String {
        match self.origins.get(key) {
            Some(origin) => format!("{origin}: {key}"),
            None => key.to_string(),
        }
    }

    fn merge_node(&mut self, node: &Node) -> Result<(), ConfigError> {
        self.merge("", node).map_err(|err| match err {
            ConfigError::UnknownKey { key, origin, .. } => {
                let suggestion = self.closest_key(&key);
                ConfigError::UnknownKey {
                    key,
                    origin,
                    suggestion,
                }
            }
            other => other,
        })?;
        self.origins.record("", node);
        ranges::check_ranges(self)
    }

    /// All leaf keys, dotted.
    pub fn keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.leaf_paths("", &mut out);
        out
    }

    /// The valid key closest to `key`: the last component weighs most, so a key put in
    /// the wrong group finds its real home.
    fn closest_key(&self, key: &str) -> Option<String> {
        let upper = key.to_ascii_uppercase();
        let last = upper.rsplit('.').next().unwrap_or(&upper);
        let mut groups = std::collections::BTreeSet::new();
        for leaf in self.keys() {
            let mut prefix = String::new();
            for part in leaf.split('.') {
                prefix = entry::join(&prefix, part);
                groups.insert(prefix.clone());
            }
        }
        let bound = last.len().max(3) / 2;
        groups
            .into_iter()
            .filter_map(|cand| {
                let cand_last = cand.rsplit('.').next().unwrap_or(&cand);
                // A truncated name (WIDTH for WIDTH_MULT) is as close as a one-letter typo.
                let last_d = if last.len() >= 3 && cand_last.starts_with(last) {
                    1
                } else {
                    edit_distance_within(last, cand_last, bound)?
                };
                let score = 3 * last_d + edit_distance(&upper, &cand);
                Some((score, last_d, cand))
            })
            .min()
            .map(|(_, _, cand)| cand)
    }

    /// The resolved config as YAML that loads back to the same config.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        self.emit(0, &mut out);
        out
    }

    /// Writes the resolved config (atomically) to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        crate::utils::fs::write_atomic(path.as_ref(), self.to_yaml().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut cfg = Config::default();
        cfg.merge_from_list(&[
            "MODEL.MOBILENET.OUT_FEATURES",
            "[res4,res5]",
            "SOLVER.BASE_LR",
            "1e-3",
        ])
        .unwrap();
        let mut back = Config::default();
        back.merge_from_str(&cfg.to_yaml(), "dump").unwrap();
        assert_eq!(cfg, back);
        assert_eq!(back.model.mobilenet.out_features, vec!["res4", "res5"]);
        assert_eq!(back.solver.base_lr, 1e-3);
    }

    #[test]
    fn suggestions() {
        let cfg = Config::default();
        assert_eq!(
            cfg.closest_key("MODEL.BACKBONE.FREZE_AT").as_deref(),
            Some("MODEL.BACKBONE.FREEZE_AT")
        );
        assert_eq!(
            cfg.closest_key("MODEL.BACKBONE.WIDTH_MULT").as_deref(),
            Some("MODEL.MOBILENET.WIDTH_MULT")
        );
        assert_eq!(cfg.closest_key("MODLE").as_deref(), Some("MODEL"));
        assert_eq!(cfg.closest_key("COMPLETELY_UNRELATED_THING"), None);
        assert_eq!(
            cfg.closest_key("MODEL.MOBILENET.WIDTH").as_deref(),
            Some("MODEL.MOBILENET.WIDTH_MULT")
        );
        // A key one letter longer than a real one is still a typo; a long one is not.
        assert_eq!(
            cfg.closest_key("SOLVER.BASE_LRR").as_deref(),
            Some("SOLVER.BASE_LR")
        );
        assert_eq!(cfg.closest_key(&"SOLVER.X".repeat(500)), None);
    }

    #[test]
    fn override_types() {
        let mut cfg = Config::default();
        cfg.merge_from_list(&[
            "MODEL.DEVICE",
            "cuda:0",
            "SEED",
            "7",
            "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
            "false",
        ])
        .unwrap();
        assert_eq!(cfg.model.device, "cuda:0");
        assert_eq!(cfg.seed, 7);
        assert!(!cfg.dataloader.filter_empty_annotations);
        let err = cfg
            .merge_from_list(&["SEED", "abc"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SEED expects an integer, found `abc`"),
            "{err}"
        );
        let err = cfg.merge_from_list(&["SEED"]).unwrap_err().to_string();
        assert!(err.contains("`SEED` has no value"), "{err}");
    }
}
