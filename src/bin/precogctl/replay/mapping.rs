//! The replay's mapping file (`config/replay/shop.toml`): which micro-processes a shop's app
//! server asks for at each kind of visitor action, and which action each data set's event
//! types are.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use precog::eval::Format;
use serde::Deserialize;

/// The mapping shipped with precog, used when `--mapping` is not given.
pub const BUILTIN: &str = include_str!("../../../../config/replay/shop.toml");

/// What an action does to the visitor's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    #[default]
    None,
    AddToCart,
    Order,
}

/// One kind of visitor action.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// The page the action happens on, sent as the event's `target`.
    pub page: String,
    #[serde(default)]
    pub effect: Effect,
    /// The visitor types country, postal code and coupon at the first such action.
    #[serde(default)]
    pub reveal: bool,
    /// Processes the app server asks for, in order.
    #[serde(default)]
    pub runs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub actions: BTreeMap<String, Action>,
    /// Per data set format: event type → action name.
    #[serde(default)]
    pub formats: BTreeMap<String, BTreeMap<String, String>>,
}

fn format_key(format: Format) -> &'static str {
    match format {
        Format::Jd => "jd",
        Format::Rees46 => "rees46",
        Format::Otto => "otto",
        Format::Events => "events",
    }
}

impl Mapping {
    /// Reads a mapping file, or the built-in one.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Mapping> {
        let (text, name) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the mapping {}", p.display()))?,
                p.display().to_string(),
            ),
            None => (BUILTIN.to_string(), "the built-in mapping".to_string()),
        };
        Mapping::parse(&text).with_context(|| format!("{name} is not a valid replay mapping"))
    }

    pub fn parse(text: &str) -> anyhow::Result<Mapping> {
        let mapping: Mapping = toml::from_str(text)?;
        for (format, types) in &mapping.formats {
            for (kind, action) in types {
                if !mapping.actions.contains_key(action) {
                    bail!("formats.{format}.{kind} names action `{action}`, which is not defined");
                }
            }
        }
        Ok(mapping)
    }

    /// The action an event type of a data set is, if the mapping names one.
    pub fn action(&self, format: Format, kind: &str) -> Option<&Action> {
        let name = self.formats.get(format_key(format))?.get(kind)?;
        self.actions.get(name)
    }

    /// Every process some action asks for.
    pub fn processes(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .actions
            .values()
            .flat_map(|a| a.runs.iter().map(String::as_str))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_mapping_covers_every_data_set() {
        let m = Mapping::load(None).unwrap();
        let view = m.action(Format::Jd, "search_to_product").unwrap();
        assert_eq!(view.runs, ["check_inventory", "price_quote"]);
        assert_eq!(
            m.action(Format::Rees46, "cart").unwrap().effect,
            Effect::AddToCart
        );
        let order = m.action(Format::Otto, "orders").unwrap();
        assert!(order.runs.iter().any(|r| r == "reserve_stock"));
        assert!(
            m.action(Format::Jd, "detail_comments")
                .unwrap()
                .runs
                .is_empty()
        );
        assert!(m.action(Format::Otto, "unheard_of").is_none());
    }

    #[test]
    fn a_format_naming_a_missing_action_is_refused() {
        let text = "[actions.view]\npage = \"p\"\n[formats.jd]\nclick = \"nope\"\n";
        let err = Mapping::parse(text).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
