//! String registries from config names to builders, like Detectron2's `Registry`.
//!
//! Each module registers its own builders in a `register` function, so adding a backbone
//! or head is one new file and one line in its folder's list of built-ins. Users can
//! register more at run time before building a model.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

pub struct Registry<T: ?Sized> {
    what: &'static str,
    entries: RwLock<BTreeMap<String, Arc<T>>>,
}

impl<T: ?Sized> Registry<T> {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            entries: RwLock::new(BTreeMap::new()),
        }
    }

    /// Registers `builder` under `name`; registering a name twice is a programming error.
    pub fn register(&self, name: &str, builder: Arc<T>) {
        let mut entries = self.entries.write().expect("registry poisoned");
        assert!(
            entries.insert(name.to_string(), builder).is_none(),
            "{} registry: `{name}` registered twice",
            self.what
        );
    }

    pub fn get(&self, name: &str) -> candle_core::Result<Arc<T>> {
        let entries = self.entries.read().expect("registry poisoned");
        entries.get(name).cloned().ok_or_else(|| {
            let suggestion = super::distance::closest(name, entries.keys().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            candle_core::Error::Msg(format!(
                "no {} named `{name}` is registered; registered: {}{suggestion}",
                self.what,
                entries.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// [`get`](Self::get) for the value of config key `key`, which the error names.
    pub fn get_for(&self, key: &str, name: &str) -> candle_core::Result<Arc<T>> {
        self.get(name)
            .map_err(|e| candle_core::Error::Msg(format!("{key}: {e}")))
    }

    pub fn names(&self) -> Vec<String> {
        self.entries
            .read()
            .expect("registry poisoned")
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_name_lists_registered() {
        let reg: Registry<dyn Fn() -> u32 + Send + Sync> = Registry::new("widget");
        reg.register("a", Arc::new(|| 1));
        reg.register("b", Arc::new(|| 2));
        assert_eq!(reg.get("b").unwrap()(), 2);
        let err = reg.get("c").err().unwrap().to_string();
        assert!(
            err.contains("no widget named `c`") && err.contains("a, b"),
            "{err}"
        );
        reg.register("gadget", Arc::new(|| 3));
        let err = reg.get_for("KEY", "gadgte").err().unwrap().to_string();
        assert!(
            err.starts_with("KEY: ") && err.contains("did you mean `gadget`?"),
            "{err}"
        );
    }
}
