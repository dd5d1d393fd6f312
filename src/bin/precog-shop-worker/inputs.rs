//! Typed access to a job's inputs, with errors that name the input and say what was expected.
//!
//! Inputs come from app servers' events (form fields, attributes), so numbers often arrive as
//! strings: a numeric string is accepted wherever a number is expected.

use serde_json::{Map, Value};

/// An input that is missing or cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error("missing input {0:?}")]
    Missing(&'static str),
    #[error("input {name:?} must be {expected}, got {got}")]
    WrongType {
        name: &'static str,
        expected: &'static str,
        got: String,
    },
}

/// The inputs of one job.
pub struct Inputs<'a>(pub &'a Map<String, Value>);

impl Inputs<'_> {
    fn get(&self, name: &'static str) -> Result<&Value, InputError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Err(InputError::Missing(name)),
            Some(value) => Ok(value),
        }
    }

    /// A non-empty string; numbers are accepted and written out (SKUs are often numeric).
    pub fn text(&self, name: &'static str) -> Result<String, InputError> {
        let value = self.get(name)?;
        let text = match value {
            Value::String(text) => text.trim().to_owned(),
            Value::Number(number) => number.to_string(),
            other => return Err(wrong(name, "a string", other)),
        };
        if text.is_empty() {
            return Err(wrong(name, "a non-empty string", value));
        }
        Ok(text)
    }

    /// A whole number, given as a JSON integer or a string of digits.
    pub fn integer(&self, name: &'static str) -> Result<i64, InputError> {
        let value = self.get(name)?;
        let number = match value {
            Value::Number(number) => number.as_i64().or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            }),
            Value::String(text) => text.trim().parse::<i64>().ok(),
            _ => None,
        };
        number.ok_or_else(|| wrong(name, "a whole number", value))
    }

    /// An optional list of strings (a single string counts as a list of one).
    pub fn text_list(&self, name: &'static str) -> Result<Vec<String>, InputError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(one)) => Ok(vec![one.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.clone()),
                    other => Err(wrong(name, "a list of strings", other)),
                })
                .collect(),
            Some(other) => Err(wrong(name, "a list of strings", other)),
        }
    }

    /// An optional string.
    pub fn optional_text(&self, name: &'static str) -> Result<Option<String>, InputError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.text(name).map(Some),
        }
    }

    /// The raw value, for inputs with their own structure (a cart).
    pub fn raw(&self, name: &'static str) -> Result<&Value, InputError> {
        self.get(name)
    }
}

/// A wrong-type error showing a short excerpt of what was given.
pub fn wrong(name: &'static str, expected: &'static str, got: &Value) -> InputError {
    let mut got = got.to_string();
    if got.len() > 60 {
        let cut = (0..=57)
            .rev()
            .find(|i| got.is_char_boundary(*i))
            .unwrap_or(0);
        got.truncate(cut);
        got.push_str("...");
    }
    InputError::WrongType {
        name,
        expected,
        got,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn numbers_may_come_as_strings() {
        let fields = map(json!({"w": "1500", "n": 2000, "f": 3.0, "bad": "heavy"}));
        let inputs = Inputs(&fields);
        assert_eq!(inputs.integer("w"), Ok(1500));
        assert_eq!(inputs.integer("n"), Ok(2000));
        assert_eq!(inputs.integer("f"), Ok(3));
        let err = inputs.integer("bad").unwrap_err();
        assert_eq!(
            err.to_string(),
            "input \"bad\" must be a whole number, got \"heavy\""
        );
    }

    #[test]
    fn missing_and_null_inputs_are_missing() {
        let fields = map(json!({"sku": null}));
        let inputs = Inputs(&fields);
        assert_eq!(inputs.text("sku"), Err(InputError::Missing("sku")));
        assert_eq!(inputs.text("country"), Err(InputError::Missing("country")));
    }

    #[test]
    fn text_accepts_numbers_and_refuses_empty_strings() {
        let fields = map(json!({"sku": 1517085, "empty": "  ", "obj": {"a": 1}}));
        let inputs = Inputs(&fields);
        assert_eq!(inputs.text("sku").unwrap(), "1517085");
        assert!(inputs.text("empty").is_err());
        assert!(inputs.text("obj").is_err());
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let fields = map(json!({"x": "é".repeat(100)}));
        let err = Inputs(&fields).integer("x").unwrap_err().to_string();
        assert!(err.len() < 120, "{err}");
    }
}
